//! Module layering: no import cycle between files of different folders in
//! `proxy`, `control-plane` or `certs` (issue 19).
//!
//! Each crate's `src/` is read with `syn`: every `use` tree and every path
//! that starts with `crate`, `super`, `self` or a name a `use` brought in is
//! resolved to the file that defines it (following re-exports, so
//! `crate::Item` re-exported by `lib.rs` points at the file that defines
//! `Item`). The files and their import arrows form a graph; a strongly
//! connected component of two or more files is a cycle. A cycle is allowed
//! only inside one *folder*: the top-level module a file belongs to
//! (`src/policy/**` is folder `policy`; a file directly in `src/` is a folder
//! of its own). Any other cycle fails the test, naming its files and the
//! imports that close it.
//!
//! `a_cycle_across_folders_is_caught` runs the same check on a fixture crate
//! with one such cycle, so the check itself is known to work.
//!
//! `architecture_tables_match_the_imports` keeps ARCHITECTURE.md's module
//! tables true: each crate's table has one row per folder, and its "may
//! import" column lists exactly the folders that folder's files import.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// A module path inside one crate, without the leading `crate`.
type ModPath = Vec<String>;

/// One crate's files and what each imports.
#[derive(Debug)]
struct CrateGraph {
    /// Module path → file.
    files: BTreeMap<ModPath, PathBuf>,
    /// Per file: every name a `use` item brings into a module of that file,
    /// keyed by (module path, name) → the absolute path it stands for.
    aliases: BTreeMap<(ModPath, String), ModPath>,
    /// Raw references: (from module path in file, absolute path referenced).
    refs: Vec<(PathBuf, ModPath)>,
}

/// A cross-folder cycle: its files, and the import arrows between them.
#[derive(Debug)]
struct Cycle {
    files: Vec<String>,
    arrows: Vec<String>,
}

// === impl CrateGraph ===

impl CrateGraph {
    /// Reads every `.rs` file below `src` (the crate root is `lib.rs`;
    /// `main.rs` and `src/bin` are separate crates and are skipped).
    fn read(src: &Path) -> CrateGraph {
        let mut files = BTreeMap::new();
        collect(src, src, &mut files);
        let mut graph = CrateGraph {
            files,
            aliases: BTreeMap::new(),
            refs: Vec::new(),
        };
        let known: BTreeSet<ModPath> = graph.files.keys().cloned().collect();
        let modules: Vec<(ModPath, PathBuf)> = graph
            .files
            .iter()
            .map(|(m, f)| (m.clone(), f.clone()))
            .collect();
        for (module, file) in modules {
            let text = std::fs::read_to_string(&file).expect("read source file");
            let ast = syn::parse_file(&text)
                .unwrap_or_else(|e| panic!("{}: does not parse: {e}", file.display()));
            let mut v = RefVisitor {
                modules: &known,
                cur: module,
                uses: Vec::new(),
                paths: Vec::new(),
            };
            v.visit_file(&ast);
            for (scope, name, target) in v.uses {
                graph.aliases.insert((scope.clone(), name), target.clone());
                graph.refs.push((file.clone(), target));
            }
            for (_, path) in v.paths {
                graph.refs.push((file.clone(), path));
            }
        }
        graph
    }

    /// The file that defines `path` (an absolute module path plus item),
    /// following `use` aliases up to a few hops.
    fn resolve(&self, path: &[String], depth: usize) -> Option<&PathBuf> {
        for n in (0..=path.len()).rev() {
            let Some(file) = self.files.get(&path[..n]) else {
                continue;
            };
            if n < path.len() && depth < 6 {
                // `module::Name` where `Name` was brought in by a `use` in
                // that module: the definition is where it points.
                let key = (path[..n].to_vec(), path[n].clone());
                if let Some(target) = self.aliases.get(&key) {
                    let mut next = target.clone();
                    next.extend_from_slice(&path[n + 1..]);
                    if let Some(f) = self.resolve(&next, depth + 1) {
                        return Some(f);
                    }
                }
            }
            return Some(file);
        }
        None
    }

    /// File → files it imports from (self-edges dropped), with one example
    /// path per arrow.
    fn edges(&self) -> BTreeMap<PathBuf, BTreeMap<PathBuf, String>> {
        let mut out: BTreeMap<PathBuf, BTreeMap<PathBuf, String>> = BTreeMap::new();
        for f in self.files.values() {
            out.entry(f.clone()).or_default();
        }
        for (from, path) in &self.refs {
            if let Some(to) = self.resolve(path, 0) {
                if to != from {
                    out.entry(from.clone())
                        .or_default()
                        .entry(to.clone())
                        .or_insert_with(|| format!("crate::{}", path.join("::")));
                }
            }
        }
        out
    }

    /// Every strongly connected component of two or more files that spans
    /// more than one folder.
    fn cross_folder_cycles(&self, src: &Path) -> Vec<Cycle> {
        let edges = self.edges();
        let sccs = tarjan(&edges);
        let rel = |f: &Path| f.strip_prefix(src).unwrap_or(f).display().to_string();
        let folder = |f: &Path| -> String {
            let r = f.strip_prefix(src).unwrap_or(f);
            let mut comps = r.components();
            let first = comps
                .next()
                .map(|c| c.as_os_str().to_string_lossy().to_string());
            match (first, comps.next()) {
                (Some(dir), Some(_)) => format!("{dir}/"),
                (Some(file), None) => file,
                _ => String::new(),
            }
        };
        let mut out = Vec::new();
        for scc in sccs {
            if scc.len() < 2 {
                continue;
            }
            let folders: BTreeSet<String> = scc.iter().map(|f| folder(f)).collect();
            if folders.len() < 2 {
                continue;
            }
            let set: BTreeSet<&PathBuf> = scc.iter().collect();
            let mut arrows = Vec::new();
            for f in &scc {
                for (to, example) in &edges[f] {
                    if set.contains(to) && folder(f) != folder(to) {
                        arrows.push(format!("{} -> {} ({example})", rel(f), rel(to)));
                    }
                }
            }
            out.push(Cycle {
                files: scc.iter().map(|f| rel(f)).collect(),
                arrows,
            });
        }
        out
    }
}

/// Module path of every `.rs` file below `dir`.
fn collect(src: &Path, dir: &Path, out: &mut BTreeMap<ModPath, PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read src dir")
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for path in entries {
        let rel = path.strip_prefix(src).expect("below src");
        if path.is_dir() {
            if rel == Path::new("bin") {
                continue;
            }
            collect(src, &path, out);
            continue;
        }
        if path.extension().and_then(|e| e.to_str()) != Some("rs") {
            continue;
        }
        let mut module: ModPath = rel
            .with_extension("")
            .components()
            .map(|c| c.as_os_str().to_string_lossy().to_string())
            .collect();
        match module.last().map(String::as_str) {
            Some("main") if module.len() == 1 => continue,
            Some("lib") if module.len() == 1 => module.clear(),
            Some("mod") => {
                module.pop();
            }
            _ => {}
        }
        out.insert(module, path);
    }
}

/// Tarjan's strongly connected components (iterative enough for a crate).
fn tarjan(edges: &BTreeMap<PathBuf, BTreeMap<PathBuf, String>>) -> Vec<Vec<PathBuf>> {
    struct State<'a> {
        edges: &'a BTreeMap<PathBuf, BTreeMap<PathBuf, String>>,
        index: BTreeMap<&'a PathBuf, usize>,
        low: BTreeMap<&'a PathBuf, usize>,
        on_stack: BTreeSet<&'a PathBuf>,
        stack: Vec<&'a PathBuf>,
        next: usize,
        out: Vec<Vec<PathBuf>>,
    }
    fn strong<'a>(s: &mut State<'a>, v: &'a PathBuf) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.edges[v].keys() {
            let Some(w) = s.edges.get_key_value(w).map(|(k, _)| k) else {
                continue;
            };
            if !s.index.contains_key(w) {
                strong(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                comp.push(w.clone());
                if w == v {
                    break;
                }
            }
            comp.sort();
            s.out.push(comp);
        }
    }
    let mut s = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        on_stack: BTreeSet::new(),
        stack: Vec::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !s.index.contains_key(v) {
            strong(&mut s, v);
        }
    }
    s.out
}

/// Collects `use` trees and crate-relative paths, tracking inline modules so
/// `super` resolves as the compiler resolves it.
struct RefVisitor<'a> {
    /// Every module path of the crate that has a file.
    modules: &'a BTreeSet<ModPath>,
    cur: ModPath,
    /// (module the `use` sits in, name it binds, absolute target).
    uses: Vec<(ModPath, String, ModPath)>,
    /// (module, absolute path) of every other crate-relative path.
    paths: Vec<(ModPath, ModPath)>,
}

// === impl RefVisitor ===

impl RefVisitor<'_> {
    /// Turns the leading `crate`/`super`/`self` of `segs` into an absolute
    /// module path; a path starting with a name a `use` bound in this
    /// module (or an enclosing one) is expanded too. `None` for external
    /// crates and local names.
    fn absolute(&self, segs: &[String]) -> Option<ModPath> {
        let first = segs.first()?;
        match first.as_str() {
            "crate" => Some(segs[1..].to_vec()),
            "self" => {
                let mut p = self.cur.clone();
                p.extend_from_slice(&segs[1..]);
                Some(p)
            }
            "super" => {
                let mut p = self.cur.clone();
                let mut rest = segs;
                while rest.first().map(String::as_str) == Some("super") {
                    p.pop()?;
                    rest = &rest[1..];
                }
                p.extend_from_slice(rest);
                Some(p)
            }
            name => {
                // A child module of this one, named without `self::`.
                let mut child = self.cur.clone();
                child.push(name.to_string());
                if self.modules.contains(&child) {
                    child.extend_from_slice(&segs[1..]);
                    return Some(child);
                }
                let bound = self
                    .uses
                    .iter()
                    .rev()
                    .find(|(scope, n, _)| n == name && self.cur.starts_with(scope))?;
                let mut p = bound.2.clone();
                p.extend_from_slice(&segs[1..]);
                Some(p)
            }
        }
    }

    /// Flattens one `use` tree into (bound name, path) pairs.
    fn walk_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.walk_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                let name = n.ident.to_string();
                let (full, bound) = if name == "self" {
                    (prefix.clone(), prefix.last().cloned().unwrap_or_default())
                } else {
                    let mut f = prefix.clone();
                    f.push(name.clone());
                    (f, name)
                };
                self.bind(bound, &full);
            }
            syn::UseTree::Rename(r) => {
                let mut full = prefix.clone();
                if r.ident != "self" {
                    full.push(r.ident.to_string());
                }
                self.bind(r.rename.to_string(), &full);
            }
            syn::UseTree::Glob(_) => {
                if let Some(abs) = self.absolute(prefix) {
                    self.paths.push((self.cur.clone(), abs));
                }
            }
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.walk_tree(prefix, t);
                }
            }
        }
    }

    fn bind(&mut self, name: String, full: &[String]) {
        if let Some(abs) = self.absolute(full) {
            self.uses.push((self.cur.clone(), name, abs));
        }
    }
}

impl<'ast> Visit<'ast> for RefVisitor<'_> {
    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        let mut prefix = Vec::new();
        if u.leading_colon.is_none() {
            self.walk_tree(&mut prefix, &u.tree);
        }
    }

    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        if m.content.is_some() {
            self.cur.push(m.ident.to_string());
            syn::visit::visit_item_mod(self, m);
            self.cur.pop();
        }
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        if p.leading_colon.is_none() && p.segments.len() > 1 {
            let segs: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
            if let Some(abs) = self.absolute(&segs) {
                self.paths.push((self.cur.clone(), abs));
            }
        }
        syn::visit::visit_path(self, p);
    }
}

/// Folder of `file` (see the module docs): `policy` for `src/policy/**`,
/// `config` for `src/config.rs`, `lib` for `src/lib.rs`.
fn folder_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap_or(file);
    let first = rel
        .components()
        .next()
        .map(|c| c.as_os_str().to_string_lossy().to_string())
        .unwrap_or_default();
    first.trim_end_matches(".rs").to_string()
}

/// Folder → the other folders its files import.
fn folder_imports(crate_dir: &str) -> BTreeMap<String, BTreeSet<String>> {
    let src = workspace().join(crate_dir).join("src");
    let graph = CrateGraph::read(&src);
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, tos) in graph.edges() {
        let a = folder_of(&src, &from);
        let set = out.entry(a.clone()).or_default();
        for to in tos.keys() {
            let b = folder_of(&src, to);
            if b != a {
                set.insert(b);
            }
        }
    }
    out
}

/// The module table of `crate_dir` in ARCHITECTURE.md: the rows after the
/// header line that starts with `` | `<crate_dir>/` module ``, as module →
/// the backquoted names of its "may import" column.
fn architecture_table(text: &str, crate_dir: &str) -> BTreeMap<String, BTreeSet<String>> {
    let header = format!("| `{crate_dir}/` module |");
    let ticked = |cell: &str| -> Vec<String> {
        cell.split('`')
            .skip(1)
            .step_by(2)
            .map(|s| s.trim_end_matches('/').to_string())
            .collect()
    };
    let mut lines = text.lines().skip_while(|l| !l.starts_with(&header));
    assert!(
        lines.next().is_some(),
        "ARCHITECTURE.md has no table starting with {header:?}"
    );
    let mut out = BTreeMap::new();
    for line in lines.skip(1).take_while(|l| l.starts_with('|')) {
        let cells: Vec<&str> = line.split('|').collect();
        assert!(cells.len() >= 5, "ARCHITECTURE.md: malformed row {line:?}");
        let module = ticked(cells[1])
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("ARCHITECTURE.md: no `module` in {line:?}"));
        out.insert(module, ticked(cells[cells.len() - 2]).into_iter().collect());
    }
    out
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn report(name: &str, cycles: &[Cycle]) -> String {
    let mut s = String::new();
    for c in cycles {
        s.push_str(&format!(
            "{name}: import cycle across folders between {} files: {}\n",
            c.files.len(),
            c.files.join(", ")
        ));
        for a in &c.arrows {
            s.push_str(&format!("    {a}\n"));
        }
    }
    s
}

fn check(crate_dir: &str) -> Vec<Cycle> {
    let src = workspace().join(crate_dir).join("src");
    CrateGraph::read(&src).cross_folder_cycles(&src)
}

#[test]
fn a_cycle_across_folders_is_caught() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/layers/src");
    let cycles = CrateGraph::read(&src).cross_folder_cycles(&src);
    let text = report("fixture", &cycles);
    println!("{text}");
    // a/inner.rs -> b.rs -> a/inner.rs (through lib.rs's re-export) crosses
    // folders; a/mod.rs <-> a/inner.rs stays inside folder a/ and is allowed.
    assert_eq!(cycles.len(), 1, "{text}");
    assert_eq!(
        cycles[0].files,
        vec!["a/inner.rs", "a/mod.rs", "b.rs"],
        "{text}"
    );
    assert!(text.contains("b.rs -> a/inner.rs (crate::Inner"), "{text}");
    assert!(text.contains("a/inner.rs -> b.rs (crate::b::B"), "{text}");
}

#[test]
fn certs_has_no_cycle_across_folders() {
    let cycles = check("certs");
    assert!(cycles.is_empty(), "{}", report("certs", &cycles));
}

#[test]
fn control_plane_has_no_cycle_across_folders() {
    let cycles = check("control-plane");
    assert!(cycles.is_empty(), "{}", report("control-plane", &cycles));
}

#[test]
fn proxy_has_no_cycle_across_folders() {
    let cycles = check("proxy");
    assert!(cycles.is_empty(), "{}", report("proxy", &cycles));
}

#[test]
fn architecture_tables_match_the_imports() {
    let text = std::fs::read_to_string(workspace().join("ARCHITECTURE.md")).expect("read");
    let mut wrong = Vec::new();
    for crate_dir in ["proxy", "control-plane", "certs"] {
        let real = folder_imports(crate_dir);
        let table = architecture_table(&text, crate_dir);
        for (module, imports) in &real {
            match table.get(module) {
                None => wrong.push(format!(
                    "{crate_dir}: no row for `{module}` (it imports {imports:?})"
                )),
                Some(listed) if listed != imports => {
                    let missing: Vec<_> = imports.difference(listed).collect();
                    let extra: Vec<_> = listed.difference(imports).collect();
                    wrong.push(format!(
                        "{crate_dir}: `{module}` imports {imports:?}; add {missing:?}, remove {extra:?}"
                    ));
                }
                Some(_) => {}
            }
        }
        for module in table.keys().filter(|m| !real.contains_key(*m)) {
            wrong.push(format!(
                "{crate_dir}: row `{module}` names no folder of src/"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "ARCHITECTURE.md module tables do not match the imports:\n{}",
        wrong.join("\n")
    );
}
