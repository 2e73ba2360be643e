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
    /// The language's name, for people.
    pub fn name(self) -> &'static str {
        match self {
            Self::Rust => "Rust",
            Self::Python => "Python",
            Self::Js => "JavaScript",
        }
    }

    /// The toolchain that builds a plugin in this language.
    pub fn toolchain(self) -> &'static str {
        match self {
            Self::Rust => "cargo build --release --target wasm32-wasip2",
            Self::Python => "componentize-py",
            Self::Js => "jco componentize",
        }
    }

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
    // A plugin's name, `[a-z0-9_-]+`, which here also names a crate or a
    // package: those start with a letter.
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name.as_bytes()[0].is_ascii_lowercase();
    if !valid {
        bail!(
            "a plugin name is `[a-z0-9_-]+` (it names the plugin's operations, `{name}/hello`), \
             and a new one starts with a letter (it names the crate or package too): not {name:?}"
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
    // Relative to the new plugin where it can be (a plugin made inside a
    // checkout, as the examples are), so the directory can move with it.
    let sdk = relative_to(&sdk, &dir).unwrap_or(sdk);
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
    println!("created {} ({})", dir.display(), lang.name());
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

/// `path` as seen from `base` (`../guest-sdk`), when `base` is within the
/// directory that holds `path` (a checkout holding the SDK).
fn relative_to(path: &Path, base: &Path) -> Option<PathBuf> {
    let base = std::path::absolute(base).ok()?;
    // `base` may not exist yet: resolve its nearest existing ancestor.
    let (mut known, mut tail) = (base.as_path(), Vec::new());
    let resolved = loop {
        if let Ok(resolved) = known.canonicalize() {
            break resolved;
        }
        tail.push(known.file_name()?);
        known = known.parent()?;
    };
    let base: PathBuf = tail.iter().rev().fold(resolved, |p, part| p.join(part));
    let path = path.canonicalize().ok()?;
    let shared = path
        .components()
        .zip(base.components())
        .take_while(|(a, b)| a == b)
        .count();
    // Only from inside the SDK's own checkout: from anywhere else, the
    // absolute path survives the plugin moving.
    if shared + 1 < path.components().count() {
        return None;
    }
    let up = base.components().count() - shared;
    let mut relative: PathBuf = std::iter::repeat_n("..", up).collect();
    relative.extend(path.components().skip(shared));
    Some(relative)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sdk_is_found_relative_to_a_new_plugin() {
        let root = tempfile::tempdir().unwrap();
        let sdk = root.path().join("opbox/guest-sdk");
        std::fs::create_dir_all(&sdk).unwrap();
        let plugin = root.path().join("opbox/plugins/greeter");
        assert_eq!(
            relative_to(&sdk, &plugin).unwrap(),
            Path::new("../../guest-sdk")
        );
        let elsewhere = root.path().join("work/greeter");
        assert_eq!(relative_to(&sdk, &elsewhere), None);
    }

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
        for name in ["", "Hello", "1st", "a/b", "-a", "a.b"] {
            let error = new_plugin(name, Lang::Python, parent.path(), None).unwrap_err();
            assert!(error.to_string().contains("plugin name"), "{error}");
        }
        assert_eq!(std::fs::read_dir(parent.path()).unwrap().count(), 0);
    }
}
