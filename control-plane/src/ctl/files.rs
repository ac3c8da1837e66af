//! Reading config files: JSON or YAML (several YAML documents per file
//! allowed), one document or a list each; a directory means every .json,
//! .yaml and .yml file in it. Every problem is reported with its file,
//! document and field.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use sidestream_core::config::{documents_from_value, Document, Item};

/// A valid document read from a file.
#[derive(Debug, Clone)]
pub struct LoadedDocument {
    /// The file it came from.
    pub file: PathBuf,
    /// Its position in the file (1-based).
    pub index: usize,
    /// The document.
    pub document: Document,
    /// Its validated spec.
    pub item: Item,
}

/// One problem in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProblem {
    /// The file.
    pub file: String,
    /// The document's position in the file (1-based), when known.
    pub document: Option<usize>,
    /// What the document is, e.g. "release policy 'push'".
    pub subject: Option<String>,
    /// The field path ("rules[1].percent"), empty for the whole document.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for FileProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(index) = self.document {
            write!(f, ": document {index}")?;
        }
        if let Some(subject) = &self.subject {
            write!(f, " ({subject})")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Whether a file name is a config file.
fn is_config_file(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("json" | "yaml" | "yml")
    )
}

/// Expands directories into their config files (sorted, not recursive).
pub fn expand(paths: &[PathBuf]) -> (Vec<PathBuf>, Vec<FileProblem>) {
    let mut files = Vec::new();
    let mut problems = Vec::new();
    for path in paths {
        if path.is_dir() {
            match std::fs::read_dir(path) {
                Ok(entries) => {
                    let mut found: Vec<PathBuf> = entries
                        .filter_map(Result::ok)
                        .map(|e| e.path())
                        .filter(|p| p.is_file() && is_config_file(p))
                        .collect();
                    found.sort();
                    if found.is_empty() {
                        problems.push(problem(
                            path,
                            None,
                            None,
                            "",
                            "no .json, .yaml or .yml file in this directory",
                        ));
                    }
                    files.extend(found);
                }
                Err(error) => problems.push(problem(path, None, None, "", &error.to_string())),
            }
        } else {
            files.push(path.clone());
        }
    }
    (files, problems)
}

fn problem(
    file: &Path,
    document: Option<usize>,
    subject: Option<String>,
    field: &str,
    message: &str,
) -> FileProblem {
    FileProblem {
        file: file.display().to_string(),
        document,
        subject,
        field: field.to_owned(),
        message: message.to_owned(),
    }
}

/// The JSON values in one file's text: a JSON file is one value; a YAML file
/// may hold several documents separated by `---`.
fn values_of(file: &Path, text: &str) -> Result<Vec<serde_json::Value>, String> {
    let is_json = file.extension().and_then(|e| e.to_str()) == Some("json");
    if is_json {
        return serde_json::from_str(text)
            .map(|v| vec![v])
            .map_err(|e| format!("invalid JSON: {e}"));
    }
    let mut values = Vec::new();
    for document in serde_norway::Deserializer::from_str(text) {
        let value: serde_json::Value =
            serde::Deserialize::deserialize(document).map_err(|e| format!("invalid YAML: {e}"))?;
        if !value.is_null() {
            values.push(value);
        }
    }
    Ok(values)
}

/// Reads and validates the documents of one file's text; `file` names the
/// file in problems and, by its extension, says JSON or YAML. (What [`load`]
/// does for each file, less the check for keys set by two files.)
pub fn load_text(file: &Path, text: &str) -> (Vec<LoadedDocument>, Vec<FileProblem>) {
    let mut loaded: Vec<LoadedDocument> = Vec::new();
    let mut problems = Vec::new();
    let values = match values_of(file, text) {
        Ok(values) => values,
        Err(message) => {
            problems.push(problem(file, None, None, "", &message));
            return (loaded, problems);
        }
    };
    // Flatten lists so every document has its own position.
    let mut elements = Vec::new();
    for value in values {
        match value {
            serde_json::Value::Array(list) => elements.extend(list),
            other => elements.push(other),
        }
    }
    if elements.is_empty() {
        problems.push(problem(file, None, None, "", "no document in this file"));
    }
    for (position, element) in elements.into_iter().enumerate() {
        let index = position + 1;
        let documents = match documents_from_value(element) {
            Ok(documents) => documents,
            Err(error) => {
                for p in error.problems {
                    problems.push(problem(file, Some(index), None, &p.field, &p.message));
                }
                continue;
            }
        };
        for document in documents {
            let subject = document.kind.subject(&document.name);
            match document.validate() {
                Ok(item) => loaded.push(LoadedDocument {
                    file: file.to_path_buf(),
                    index,
                    document,
                    item,
                }),
                Err(error) => {
                    for p in error.problems {
                        problems.push(problem(
                            file,
                            Some(index),
                            Some(subject.clone()),
                            &p.field,
                            &p.message,
                        ));
                    }
                }
            }
        }
    }
    (loaded, problems)
}

/// Reads and validates every document in `paths`; returns the valid ones and
/// every problem (a key given twice is a problem too).
pub fn load(paths: &[PathBuf]) -> (Vec<LoadedDocument>, Vec<FileProblem>) {
    let (files, mut problems) = expand(paths);
    let mut loaded: Vec<LoadedDocument> = Vec::new();
    for file in files {
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(error) => {
                problems.push(problem(&file, None, None, "", &error.to_string()));
                continue;
            }
        };
        let (documents, file_problems) = load_text(&file, &text);
        loaded.extend(documents);
        problems.extend(file_problems);
    }
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for doc in &loaded {
        let key = doc.document.key();
        let here = format!("{} document {}", doc.file.display(), doc.index);
        if let Some(first) = seen.get(&key) {
            problems.push(problem(
                &doc.file,
                Some(doc.index),
                Some(doc.document.kind.subject(&doc.document.name)),
                "",
                &format!("key {key} is also set by {first}"),
            ));
        } else {
            seen.insert(key, here);
        }
    }
    (loaded, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        path
    }

    #[test]
    fn reads_json_yaml_lists_and_directories() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(
            dir.path(),
            "a.json",
            r#"[{"kind":"TopicSettings","name":"ticker","spec":{}},{"kind":"TraceSettings","spec":{"sampleRatio":0.5}}]"#,
        );
        write(
            dir.path(),
            "b.yaml",
            "kind: TopicSettings\nname: news\nspec:\n  historySize: 10\n---\nkind: topic\nname: chat\nspec: {}\n",
        );
        write(dir.path(), "notes.txt", "ignored");
        let (docs, problems) = load(&[dir.path().to_path_buf()]);
        assert!(problems.is_empty(), "{problems:?}");
        let keys: Vec<String> = docs.iter().map(|d| d.document.key()).collect();
        assert_eq!(
            keys,
            vec![
                "v1/topics/ticker",
                "v1/trace",
                "v1/topics/news",
                "v1/topics/chat"
            ]
        );
        assert_eq!(docs[3].index, 2);
    }

    #[test]
    fn reads_text_as_the_named_file() {
        let (docs, problems) = load_text(
            Path::new("inline.yaml"),
            "kind: topic\nname: t\nspec: {}\n---\nkind: topic\nname: u\nspec: 3\n",
        );
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].file, Path::new("inline.yaml"));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].file, "inline.yaml");
        assert_eq!(problems[0].document, Some(2));
        // The extension says JSON: YAML text is refused as JSON.
        let (docs, problems) = load_text(Path::new("inline.json"), "kind: topic\n");
        assert!(docs.is_empty());
        assert!(
            problems[0].message.starts_with("invalid JSON"),
            "{problems:?}"
        );
    }

    #[test]
    fn reports_every_problem_by_file_document_and_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bad = write(
            dir.path(),
            "bad.yaml",
            "- kind: TopicSettings\n  name: ok\n  spec: {}\n- kind: TopicSettings\n  name: t\n  spec:\n    historySize: -1\n- kind: Nope\n  name: x\n  spec: {}\n",
        );
        let broken = write(dir.path(), "broken.json", "{");
        let dup = write(
            dir.path(),
            "dup.json",
            r#"{"kind":"TopicSettings","name":"ok","spec":{}}"#,
        );
        let (docs, problems) = load(&[bad.clone(), broken, dup]);
        assert_eq!(docs.len(), 2, "the two valid documents");
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert!(
            text.iter().any(|p| p.starts_with(&format!(
                "{}: document 2 (topic 't'): historySize",
                bad.display()
            ))),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|p| p.contains("document 3") && p.contains("kind")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|p| p.contains("broken.json") && p.contains("invalid JSON")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|p| p.contains("dup.json") && p.contains("also set by")),
            "{text:?}"
        );
    }
}
