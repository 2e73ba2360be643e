//! `opbox new NAME --lang rust|python|js`: a buildable plugin from a
//! template, with the WIT and the authoring layer it needs.
//!
//! The templates live in `host/templates/`; the Python and JavaScript
//! authoring layers and the WIT are the very files the examples in
//! `plugins/` are built from, embedded here.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::ValueEnum;

/// A plugin's source language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Lang {
    /// Rust with the opbox SDK (`cargo`, the `wasm32-wasip2` target).
    Rust,
    /// Python with `opbox_plugin.py` (componentize-py).
    Python,
    /// JavaScript with `opbox.js` (jco and its QuickJS backend).
    Js,
}

impl Lang {
    /// The language of the plugin in `dir`, from the file that marks it.
    pub fn of(dir: &Path) -> Result<Self> {
        if dir.join("Cargo.toml").is_file() {
            Ok(Self::Rust)
        } else if dir.join("package.json").is_file() {
            Ok(Self::Js)
        } else if dir.join("app.py").is_file() {
            Ok(Self::Python)
        } else {
            bail!(
                "{} holds no plugin: no Cargo.toml, package.json or app.py (`opbox new` makes one)",
                dir.display()
            )
        }
    }
}

/// The WIT package and its dependencies, as `wit/` in a new plugin.
const WIT: &[(&str, &str)] = &[
    ("plugin.wit", include_str!("../../../../wit/plugin.wit")),
    (
        "deps/config/store.wit",
        include_str!("../../../../wit/deps/config/store.wit"),
    ),
    (
        "deps/config/world.wit",
        include_str!("../../../../wit/deps/config/world.wit"),
    ),
    (
        "deps/keyvalue/atomic.wit",
        include_str!("../../../../wit/deps/keyvalue/atomic.wit"),
    ),
    (
        "deps/keyvalue/batch.wit",
        include_str!("../../../../wit/deps/keyvalue/batch.wit"),
    ),
    (
        "deps/keyvalue/store.wit",
        include_str!("../../../../wit/deps/keyvalue/store.wit"),
    ),
    (
        "deps/keyvalue/world.wit",
        include_str!("../../../../wit/deps/keyvalue/world.wit"),
    ),
];

/// The files of a new plugin in `lang`: `(path, contents)`, with
/// `{{name}}`, `{{crate}}` and `{{sdk}}` still to fill in.
fn files(lang: Lang) -> Vec<(&'static str, &'static str)> {
    match lang {
        Lang::Rust => vec![
            (
                "Cargo.toml",
                include_str!("../../../templates/rust/Cargo.toml"),
            ),
            (
                "src/lib.rs",
                include_str!("../../../templates/rust/src/lib.rs"),
            ),
            (
                ".gitignore",
                include_str!("../../../templates/rust/gitignore"),
            ),
        ],
        Lang::Python => vec![
            ("app.py", include_str!("../../../templates/python/app.py")),
            (
                "opbox_plugin.py",
                include_str!("../../../../plugins/greeter-py/opbox_plugin.py"),
            ),
            (
                ".gitignore",
                include_str!("../../../templates/python/gitignore"),
            ),
        ],
        Lang::Js => vec![
            ("app.js", include_str!("../../../templates/js/app.js")),
            (
                "opbox.js",
                include_str!("../../../../plugins/greeter-js/opbox.js"),
            ),
            (
                "package.json",
                include_str!("../../../templates/js/package.json"),
            ),
            (
                ".gitignore",
                include_str!("../../../templates/js/gitignore"),
            ),
        ],
    }
}

/// The guest SDK this binary was built beside, if it is still there.
fn default_sdk() -> Option<PathBuf> {
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-sdk");
    sdk.canonicalize().ok()
}

/// Writes a new plugin `name` in `lang` into `parent/name`, and says what
/// to do next.
pub fn new_plugin(name: &str, lang: Lang, parent: &Path, sdk: Option<PathBuf>) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.as_bytes()[0].is_ascii_lowercase();
    if !valid {
        bail!(
            "a plugin name is lower-case letters, digits and dashes, starting with a letter \
             (it names the plugin's operations, `{name}/hello`): not {name:?}"
        );
    }
    let dir = parent.join(name);
    if dir.exists() {
        bail!("{} exists already", dir.display());
    }
    let sdk = match (lang, sdk.or_else(default_sdk)) {
        (Lang::Rust, None) => {
            bail!("where is opbox's guest-sdk? pass --sdk PATH (a checkout's guest-sdk directory)")
        }
        (_, sdk) => sdk.unwrap_or_default(),
    };
    let sdk = sdk.to_string_lossy().replace('\\', "/");
    let fill = |text: &str| {
        text.replace("{{name}}", name)
            .replace("{{crate}}", &name.replace('-', "_"))
            .replace("{{sdk}}", &sdk)
    };
    let mut written: Vec<(PathBuf, String)> = files(lang)
        .into_iter()
        .map(|(path, text)| (dir.join(path), fill(text)))
        .collect();
    if lang != Lang::Rust {
        // Rust plugins get the WIT from the SDK; the others build against
        // a copy of their own.
        written.extend(
            WIT.iter()
                .map(|(path, text)| (dir.join("wit").join(path), (*text).to_owned())),
        );
    }
    for (path, text) in &written {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!("created {} ({lang:?})", dir.display());
    let setup = match lang {
        Lang::Rust => "rustup target add wasm32-wasip2",
        Lang::Python => "pip install componentize-py==0.25.1",
        Lang::Js => "npm install",
    };
    println!(
        "next:\n    cd {}\n    {setup}\n    opbox dev",
        dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_js_template_pins_the_toolchain_the_example_is_built_with() {
        let pins = |text: &str| {
            let json: serde_json::Value = serde_json::from_str(text).unwrap();
            json["devDependencies"].clone()
        };
        let template = include_str!("../../../templates/js/package.json");
        let example = include_str!("../../../../plugins/greeter-js/package.json");
        assert_eq!(pins(template), pins(example));
    }

    #[test]
    fn names_that_cannot_name_operations_are_refused() {
        let parent = tempfile::tempdir().unwrap();
        for name in ["", "Hello", "1st", "a/b", "a_b"] {
            let error = new_plugin(name, Lang::Python, parent.path(), None).unwrap_err();
            assert!(error.to_string().contains("plugin name"), "{error}");
        }
        assert_eq!(std::fs::read_dir(parent.path()).unwrap().count(), 0);
    }
}
