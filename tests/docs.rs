//! The project's documents and the citations of them stay in step.
//!
//! Code, tests, scripts, benchmarks, README.md and ARCHITECTURE.md cite the documents under
//! `docs/` by file, or by file and sections: `docs/hardening.md`, `docs/lapi.md §4.3`,
//! `docs/lapi.md §4.2, §9.3`, `docs/cloudflare-lists.md §2.4–§2.6`. Every cited file must
//! exist, and every cited section must have a heading in it: a line of `#`s whose text
//! starts with the number, followed by `.` or a space (`### 4.3 Delta`, `## 9. Newer
//! LAPIs`). A section sign with no file before it names nothing, so it is
//! refused, except inside a document, where it names a section of that document. A
//! `docs/` path below some other directory points outside the repository, and is refused
//! too.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The section sign, spelt out so that this file cites nothing itself.
const SIGN: char = '\u{a7}';
/// Where citations are looked for.
const SCANNED_DIRS: [&str; 5] = ["src", "crates", "tests", "scripts", "benches"];
const SCANNED_FILES: [&str; 2] = ["README.md", "ARCHITECTURE.md"];
/// The documents.
const DOCS: &str = "docs";

/// One cited section, or a whole file when `section` is `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Citation {
    doc: String,
    section: Option<String>,
    /// `path:line`, for the message.
    at: String,
}

/// What one line cites, and what is wrong in it.
#[derive(Debug, Default, PartialEq, Eq)]
struct LineScan {
    /// (document name, sections; empty for the file alone).
    cited: Vec<(String, Vec<String>)>,
    /// Section numbers after a section sign that no file name precedes.
    bare: Vec<String>,
    /// `docs/<name>.md` below another directory: a path ending in `…/docs/<name>.md`.
    outside: Vec<String>,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A section number at the start of `text`: digits, optionally `.digits` repeated.
fn number(text: &str) -> Option<&str> {
    let bytes = text.as_bytes();
    let digits = |from: usize| {
        from + bytes[from..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count()
    };
    let mut end = digits(0);
    // A dot belongs to the number only when digits follow it (`4.3`, not `4.`).
    while end > 0
        && bytes.get(end) == Some(&b'.')
        && bytes.get(end + 1).is_some_and(u8::is_ascii_digit)
    {
        end = digits(end + 1);
    }
    (end > 0).then(|| &text[..end])
}

/// `§N` at the start of `text`: the number and the bytes taken.
fn sign_and_number(text: &str) -> Option<(&str, usize)> {
    let rest = text.strip_prefix(SIGN)?;
    let n = number(rest)?;
    Some((n, SIGN.len_utf8() + n.len()))
}

/// Every section of a range `a–b` whose numbers differ only in their last part, else the
/// two ends.
fn expand(from: &str, to: &str) -> Vec<String> {
    fn split(s: &str) -> (&str, &str) {
        s.rsplit_once('.').unwrap_or(("", s))
    }
    let ((pa, la), (pb, lb)) = (split(from), split(to));
    match (la.parse::<u32>(), lb.parse::<u32>()) {
        (Ok(a), Ok(b)) if pa == pb && a <= b => (a..=b)
            .map(|n| {
                if pa.is_empty() {
                    n.to_string()
                } else {
                    format!("{pa}.{n}")
                }
            })
            .collect(),
        _ => vec![from.to_owned(), to.to_owned()],
    }
}

/// The citations and problems of one line.
fn scan_line(line: &str) -> LineScan {
    let mut scan = LineScan::default();
    let mut consumed = BTreeSet::new();
    let mut from = 0;
    while let Some(found) = line[from..].find("docs/") {
        let at = from + found;
        from = at + "docs/".len();
        let name_len = line[from..]
            .bytes()
            .take_while(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'_'
            })
            .count();
        let name = &line[from..from + name_len];
        let after_name = &line[from + name_len..];
        let followed = after_name.strip_prefix(".md");
        let is_doc = !name.is_empty()
            && followed.is_some_and(|rest| !rest.starts_with(|c: char| c.is_alphanumeric()));
        if !is_doc {
            continue;
        }
        // What stands before `docs/`: nothing of a path, or the path of another directory.
        let before = &line[..at];
        match before.chars().next_back() {
            Some(c) if c.is_alphanumeric() || c == '_' || c == '-' || c == '.' => continue,
            Some('/') => {
                let token_start = before
                    .rfind(|c: char| c.is_whitespace() || "(`\"'[<".contains(c))
                    .map_or(0, |i| i + 1);
                let token = &before[token_start..];
                if !token.contains("://") && token != "./" {
                    scan.outside.push(format!("{token}docs/{name}.md"));
                }
                continue;
            }
            _ => {}
        }
        // The sections: ` §N`, then `, §M`, `–§M`, ` and §M`, …
        let mut pos = from + name_len + ".md".len();
        let mut sections = Vec::new();
        if let Some(rest) = line[pos..].strip_prefix(' ') {
            if let Some((n, taken)) = sign_and_number(rest) {
                consumed.insert(pos + 1);
                sections.push(n.to_owned());
                pos += 1 + taken;
                loop {
                    let rest = &line[pos..];
                    let (range, sep) = if rest.starts_with('\u{2013}') {
                        (true, '\u{2013}'.len_utf8())
                    } else if rest.starts_with('-') {
                        (true, 1)
                    } else if rest.starts_with(", and ") {
                        (false, 6)
                    } else if rest.starts_with(", ") {
                        (false, 2)
                    } else if rest.starts_with(" and ") {
                        (false, 5)
                    } else {
                        break;
                    };
                    let Some((n, taken)) = sign_and_number(&rest[sep..]) else {
                        break;
                    };
                    consumed.insert(pos + sep);
                    if range {
                        let first = sections.pop().expect("a range starts at a section");
                        sections.extend(expand(&first, n));
                    } else {
                        sections.push(n.to_owned());
                    }
                    pos += sep + taken;
                }
            }
        }
        scan.cited.push((name.to_owned(), sections));
    }
    for (i, c) in line.char_indices() {
        if c == SIGN && !consumed.contains(&i) {
            if let Some((n, _)) = sign_and_number(&line[i..]) {
                scan.bare.push(n.to_owned());
            }
        }
    }
    scan
}

/// The section numbers a document has headings for (outside fenced code).
fn headings(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced || !line.starts_with('#') {
            continue;
        }
        let title = line.trim_start_matches('#');
        let Some(title) = title.strip_prefix(' ') else {
            continue;
        };
        let title = title.trim_start();
        if let Some(n) = number(title) {
            let after = &title[n.len()..];
            if after.is_empty() || after.starts_with(' ') || after.starts_with('.') {
                found.insert(n.to_owned());
            }
        }
    }
    found
}

/// Text files below `dir`, recursively, in a stable order.
fn files_below(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "__pycache__") {
                continue;
            }
            files_below(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// Everything the scan found: citations with their place, and the problems it saw.
struct Scan {
    citations: Vec<Citation>,
    problems: Vec<String>,
    /// Document name → the section numbers it has headings for.
    documents: BTreeMap<String, BTreeSet<String>>,
}

fn scan_repository() -> Scan {
    let root = root();
    let mut documents = BTreeMap::new();
    let mut doc_files = Vec::new();
    files_below(&root.join(DOCS), &mut doc_files);
    for path in &doc_files {
        if path.extension().is_some_and(|e| e == "md") {
            let name = path
                .file_stem()
                .expect("a name")
                .to_string_lossy()
                .into_owned();
            let text = fs::read_to_string(path).expect("a readable document");
            documents.insert(name, headings(&text));
        }
    }
    let mut files = Vec::new();
    for dir in SCANNED_DIRS {
        files_below(&root.join(dir), &mut files);
    }
    files.extend(SCANNED_FILES.iter().map(|f| root.join(f)));
    files.extend(doc_files);
    let mut citations = Vec::new();
    let mut problems = Vec::new();
    for path in files {
        let Ok(text) = fs::read_to_string(&path) else {
            continue; // Not text.
        };
        let rel = path.strip_prefix(&root).unwrap_or(&path);
        let rel_text = rel.to_string_lossy().replace('\\', "/");
        // Inside a document, a bare section is one of its own.
        let own_doc = rel_text
            .strip_prefix("docs/")
            .and_then(|f| f.strip_suffix(".md"))
            .map(str::to_owned);
        for (i, line) in text.lines().enumerate() {
            let at = format!("{rel_text}:{}", i + 1);
            let scan = scan_line(line);
            for (doc, sections) in scan.cited {
                if sections.is_empty() {
                    citations.push(Citation {
                        doc,
                        section: None,
                        at: at.clone(),
                    });
                } else {
                    citations.extend(sections.into_iter().map(|s| Citation {
                        doc: doc.clone(),
                        section: Some(s),
                        at: at.clone(),
                    }));
                }
            }
            for n in scan.bare {
                match &own_doc {
                    Some(doc) => citations.push(Citation {
                        doc: doc.clone(),
                        section: Some(n),
                        at: at.clone(),
                    }),
                    None => problems.push(format!(
                        "{at}: {SIGN}{n} names no document: write docs/<name>.md {SIGN}{n}"
                    )),
                }
            }
            for path in scan.outside {
                problems.push(format!(
                    "{at}: {path} is outside the repository: cite the repository's own docs/"
                ));
            }
        }
    }
    for c in &citations {
        let Some(sections) = documents.get(&c.doc) else {
            problems.push(format!("{}: docs/{}.md does not exist", c.at, c.doc));
            continue;
        };
        if let Some(section) = &c.section {
            if !sections.contains(section) {
                problems.push(format!(
                    "{}: docs/{}.md has no heading for {SIGN}{section}",
                    c.at, c.doc
                ));
            }
        }
    }
    Scan {
        citations,
        problems,
        documents,
    }
}

#[test]
fn every_citation_names_a_document_and_a_section_in_it() {
    let scan = scan_repository();
    assert!(
        scan.problems.is_empty(),
        "{} broken citation(s):\n{}",
        scan.problems.len(),
        scan.problems.join("\n")
    );
    // The scan sees citations at all, and every document is cited from outside docs/.
    let cited: BTreeSet<&str> = scan
        .citations
        .iter()
        .filter(|c| !c.at.starts_with("docs/"))
        .map(|c| c.doc.as_str())
        .collect();
    for doc in scan.documents.keys() {
        assert!(
            cited.contains(doc.as_str()),
            "docs/{doc}.md is cited nowhere in the code, the scripts, README.md or ARCHITECTURE.md"
        );
    }
    assert!(!scan.documents.is_empty(), "no documents under docs/");
}

#[test]
fn citations_are_read_as_written() {
    let scan = scan_line(&format!(
        "x (docs/lapi.md {s}4.2, {s}9.3) and docs/cloudflare-lists.md {s}2.4\u{2013}{s}2.6, {s}6.",
        s = SIGN
    ));
    assert_eq!(
        scan.cited,
        [
            ("lapi".to_owned(), vec!["4.2".to_owned(), "9.3".to_owned()]),
            (
                "cloudflare-lists".to_owned(),
                ["2.4", "2.5", "2.6", "6"].map(String::from).to_vec()
            ),
        ]
    );
    assert!(scan.bare.is_empty() && scan.outside.is_empty(), "{scan:?}");

    // Built, so that this file holds no such path itself.
    let scan = scan_line(&format!(
        "see {s}3 and elsewhere/{d}lapi.md {s}9",
        s = SIGN,
        d = "docs/"
    ));
    // The section after a path outside names none of ours either.
    assert_eq!(scan.bare, ["3", "9"]);
    assert_eq!(scan.outside, [format!("elsewhere/{}lapi.md", "docs/")]);
    assert!(scan.cited.is_empty(), "{scan:?}");

    let scan =
        scan_line("docs/hardening.md alone; src/content/docs/waf/x.mdx; https://a.b/docs/c.md");
    assert_eq!(scan.cited, [("hardening".to_owned(), vec![])]);
    assert!(scan.outside.is_empty(), "{scan:?}");

    assert_eq!(expand("1", "3"), ["1", "2", "3"]);
    assert_eq!(expand("4.9", "5.1"), ["4.9", "5.1"]);
}

#[test]
fn headings_are_numbered_sections() {
    let found = headings("# Title\n## 4. Stream\n### 4.3 Delta\n#### 4.3.1\n```\n# 7. not a heading\n```\n## 12\n#5 no\n");
    let want: BTreeSet<String> = ["4", "4.3", "4.3.1", "12"].map(String::from).into();
    assert_eq!(found, want);
    // `4` is not `4.3`, nor the other way round.
    assert!(!headings("### 4.3 Delta").contains("4"));
}

/// CHANGELOG has a release section for the version the binary reports, below an
/// `Unreleased` one (Keep a Changelog).
#[test]
fn the_changelog_has_a_section_for_this_version() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/CHANGELOG.md"))
        .expect("CHANGELOG.md");
    let version = env!("CARGO_PKG_VERSION");
    let heading = format!("## [{version}] - ");
    let at = text
        .find(&heading)
        .unwrap_or_else(|| panic!("CHANGELOG.md has no `{heading}YYYY-MM-DD` section"));
    let date = &text[at + heading.len()..]
        .lines()
        .next()
        .unwrap_or_default();
    let digits: Vec<&str> = date.split('-').collect();
    assert!(
        digits.len() == 3
            && digits.iter().map(|d| d.len()).eq([4, 2, 2])
            && date.chars().all(|c| c.is_ascii_digit() || c == '-'),
        "the {version} section's date is not YYYY-MM-DD: {date:?}"
    );
    let unreleased = text.find("## [Unreleased]").expect("an Unreleased section");
    assert!(unreleased < at, "Unreleased comes first");
}
