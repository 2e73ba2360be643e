//! The example plugins, built from `plugins/` by the build script and
//! embedded, so `opbox serve` has something to serve out of the box.

/// `(name, component bytes)` of each bundled example.
pub const EXAMPLES: &[(&str, &[u8])] = &[
    (
        "echo",
        include_bytes!(concat!(env!("OPBOX_PLUGINS_DIR"), "/echo.wasm")),
    ),
    (
        "ticker",
        include_bytes!(concat!(env!("OPBOX_PLUGINS_DIR"), "/ticker.wasm")),
    ),
    (
        "textkit",
        include_bytes!(concat!(env!("OPBOX_PLUGINS_DIR"), "/textkit.wasm")),
    ),
    (
        "gzip",
        include_bytes!(concat!(env!("OPBOX_PLUGINS_DIR"), "/gzip.wasm")),
    ),
    (
        "calc",
        include_bytes!(concat!(env!("OPBOX_PLUGINS_DIR"), "/calc.wasm")),
    ),
];

/// How a `[[plugins]] path` names a bundled example: `bundled:echo`.
pub const SCHEME: &str = "bundled:";

/// The bundled example `path` names (`bundled:NAME`), if it names one;
/// `Err` with the names there are, for a `bundled:` path naming none.
pub fn named(path: &std::path::Path) -> Option<Result<&'static [u8], String>> {
    let name = path.to_str()?.strip_prefix(SCHEME)?;
    Some(
        EXAMPLES
            .iter()
            .find(|(example, _)| *example == name)
            .map(|(_, wasm)| *wasm)
            .ok_or_else(|| {
                let names: Vec<String> = EXAMPLES
                    .iter()
                    .map(|(n, _)| format!("{SCHEME}{n}"))
                    .collect();
                format!(
                    "no bundled example `{name}`; there are {}",
                    names.join(", ")
                )
            }),
    )
}

/// Where the build script left the component of the plugin crate `name`
/// (examples and test fixtures alike). For tests and benchmarks of this
/// repository: the path is on the machine that built the host.
#[doc(hidden)]
pub fn built_plugin(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("OPBOX_PLUGINS_DIR")).join(format!("{}.wasm", name.replace('-', "_")))
}
