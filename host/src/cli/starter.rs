//! `couchvault policy new NAME --lang rust|js|python`: a starter project for the WIT this
//! binary was built with (embedded, so the starter always matches the host).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};

use super::args::{PolicyLang, PolicyWorld};

const WIT: &str = include_str!("../../../wit/policy.wit");
const RUST_CARGO: &str = include_str!("starter/Cargo.toml");
const RUST_LIB: &str = include_str!("starter/lib.rs");
const JS_POLICY: &str = include_str!("starter/policy.js");
/// The examples' build script: it builds whatever package.json lists.
const JS_BUILD: &str = include_str!("../../../policies/examples/js/build.mjs");
const JS_PACKAGE: &str = include_str!("../../../policies/examples/js/package.json");
const PY_APP: &str = include_str!("starter/app.py");
const PY_REQUIREMENTS: &str = include_str!("../../../policies/examples/python/requirements.txt");

impl PolicyLang {
    pub fn title(self) -> &'static str {
        match self {
            PolicyLang::Rust => "Rust",
            PolicyLang::Js => "JavaScript",
            PolicyLang::Python => "Python",
        }
    }
}

impl PolicyWorld {
    fn wit_name(self) -> &'static str {
        match self {
            PolicyWorld::Retention => "retention-policy",
            PolicyWorld::Protection => "protection-policy",
            PolicyWorld::Both => "policy",
        }
    }
}

/// Fills a template: `@NAME@`, `@CRATE@`, `@WORLD@`, and keeps the lines between `@@retain`
/// (or `@@protect`) and `@@end` only when the world exports that function.
fn fill(template: &str, name: &str, world: PolicyWorld) -> String {
    let keep_retain = world != PolicyWorld::Protection;
    let keep_protect = world != PolicyWorld::Retention;
    let mut out = String::new();
    let mut keeping = true;
    for line in template.lines() {
        match line.trim() {
            "@@retain" => keeping = keep_retain,
            "@@protect" => keeping = keep_protect,
            "@@end" => keeping = true,
            _ if keeping => {
                out.push_str(line);
                out.push('\n');
            }
            _ => {}
        }
    }
    out.replace("@NAME@", name)
        .replace("@CRATE@", &name.replace('-', "_"))
        .replace("@WORLD@", world.wit_name())
}

/// The JavaScript starter's package.json: the examples' pinned toolchain, its one policy.
fn js_package(name: &str, world: PolicyWorld) -> Result<String> {
    let mut package: serde_json::Value = serde_json::from_str(JS_PACKAGE)?;
    package["name"] = name.into();
    package["description"] = format!("a couchvault policy (world {})", world.wit_name()).into();
    package["couchvault"] = serde_json::json!({
        "wit": "wit",
        "policies": [{"source": "policy.js", "world": world.wit_name(), "output": format!("{name}.wasm")}],
    });
    Ok(serde_json::to_string_pretty(&package)? + "\n")
}

fn readme(name: &str, lang: PolicyLang, world: PolicyWorld) -> String {
    let (source, build, wasm) = match lang {
        PolicyLang::Rust => (
            "src/lib.rs",
            "rustup target add wasm32-wasip2\ncargo build --release --target wasm32-wasip2".to_string(),
            format!("target/wasm32-wasip2/release/{}.wasm", name.replace('-', "_")),
        ),
        PolicyLang::Js => (
            "policy.js",
            "npm install                     # componentize-js, pinned in package.json\nnode build.mjs".to_string(),
            format!("{name}.wasm"),
        ),
        PolicyLang::Python => (
            "app.py",
            format!(
                "pip install --target .tools -r requirements.txt     # componentize-py, pinned\n\
                 PYTHONPATH=.tools .tools/bin/componentize-py -d wit -w {} componentize app -o {name}.wasm",
                world.wit_name()
            ),
            format!("{name}.wasm"),
        ),
    };
    format!(
        "# {name}\n\n\
         A couchvault policy (world `{world}` of `wit/policy.wit`, the WIT of the couchvault that\n\
         wrote this starter). Edit `{source}`, then build, try and give it to a tenant:\n\n\
         ```sh\n{build}\n\
         couchvault policy test {wasm} --params '{{}}'\n\
         couchvault --tenant TENANT policy add {name} {wasm}\n```\n\n\
         `policy test` shows each backup's keep/delete with its reason and the protection answer\n\
         (with `--backups FILE` and `--now TIME` for a list of your own). A policy has no clock,\n\
         files, network or environment: time is the input's `now`. Each call runs under a memory\n\
         cap, and fuel and a deadline that grow with the number of backups it is given; see\n\
         couchvault's docs/POLICIES.md.\n",
        world = world.wit_name()
    )
}

/// The files of a starter, relative to its directory.
fn files(name: &str, lang: PolicyLang, world: PolicyWorld) -> Result<Vec<(&'static str, String)>> {
    let mut files = vec![
        ("wit/policy.wit", WIT.to_string()),
        ("README.md", readme(name, lang, world)),
    ];
    match lang {
        PolicyLang::Rust => {
            files.push(("Cargo.toml", fill(RUST_CARGO, name, world)));
            files.push(("src/lib.rs", fill(RUST_LIB, name, world)));
            files.push((".gitignore", "/target\n".into()));
        }
        PolicyLang::Js => {
            files.push(("policy.js", fill(JS_POLICY, name, world)));
            files.push(("build.mjs", JS_BUILD.to_string()));
            files.push(("package.json", js_package(name, world)?));
            files.push((".gitignore", "/node_modules\n*.wasm\n".into()));
        }
        PolicyLang::Python => {
            files.push(("app.py", fill(PY_APP, name, world)));
            files.push(("requirements.txt", PY_REQUIREMENTS.to_string()));
            files.push((".gitignore", "/.tools\n__pycache__/\n*.wasm\n".into()));
        }
    }
    Ok(files)
}

/// Writes the starter into `dir` (default `./NAME`), which must not exist or be empty:
/// nothing of the user's is overwritten.
pub fn new(
    name: &str,
    lang: PolicyLang,
    world: PolicyWorld,
    dir: Option<PathBuf>,
) -> Result<PathBuf> {
    if lang == PolicyLang::Rust && name.contains('.') {
        bail!(
            "'{name}' cannot name a Rust crate: use letters, digits, - and _ (nothing was written)"
        );
    }
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    let occupied = |d: &Path| d.read_dir().map(|mut e| e.next().is_some()).unwrap_or(true);
    if dir.exists() && occupied(&dir) {
        bail!(
            "{} already exists and is not empty: give another NAME or --dir (nothing was written)",
            dir.display()
        );
    }
    for (path, text) in files(name, lang, world)? {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_keep_only_the_worlds_functions() {
        let both = fill(RUST_LIB, "my-policy", PolicyWorld::Both);
        assert!(both.contains("fn retain(") && both.contains("fn protect("));
        assert!(both.contains("world: \"policy\"") && !both.contains("@@"));
        let retention = fill(PY_APP, "p", PolicyWorld::Retention);
        assert!(retention.contains("def retain(") && !retention.contains("def protect("));
        assert!(!retention.contains("\"level\""));
        let protection = fill(JS_POLICY, "p", PolicyWorld::Protection);
        assert!(
            !protection.contains("function retain(") && protection.contains("function protect(")
        );
        let cargo = fill(RUST_CARGO, "my-policy", PolicyWorld::Both);
        assert!(cargo.contains("name = \"my-policy\""));
        let readme = readme("my-policy", PolicyLang::Rust, PolicyWorld::Both);
        assert!(readme.contains("release/my_policy.wasm"));
        let package: serde_json::Value =
            serde_json::from_str(&js_package("p", PolicyWorld::Retention).unwrap()).unwrap();
        assert_eq!(
            package["couchvault"]["policies"][0]["world"],
            "retention-policy"
        );
        assert!(package["devDependencies"]["@bytecodealliance/componentize-js"].is_string());
    }
}
