//! The text formats of the structured fuzz inputs, so that seeds are
//! readable files and libFuzzer's mutations (and dictionaries) work on text.

// Each target uses a part of this file.
#![allow(dead_code)]

/// `name: value` lines: the first `:` splits (a leading `:` belongs to the
/// name, for pseudo-headers); one space after it is dropped; a line without
/// `:` is a name with an empty value.
pub fn header_lines(text: &str) -> Vec<(&str, &str)> {
    text.lines()
        .map(|line| {
            let split = line
                .char_indices()
                .skip(1)
                .find(|&(_, c)| c == ':')
                .map(|(i, _)| i);
            match split {
                Some(i) => {
                    let value = &line[i + 1..];
                    (&line[..i], value.strip_prefix(' ').unwrap_or(value))
                }
                None => (line, ""),
            }
        })
        .collect()
}

/// The parts of `text` that begin with a line starting with `marker`:
/// `[(the rest of that line, the lines up to the next such line)]`, the
/// final newline of each part dropped. Text before the first one is dropped.
pub fn sections<'a>(text: &'a str, marker: &str) -> Vec<(&'a str, &'a str)> {
    let mut out: Vec<(&'a str, &'a str)> = Vec::new();
    let mut offset = 0;
    // (head, start of body) of the section being read.
    let mut open: Option<(&'a str, usize)> = None;
    for line in text.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        if let Some(head) = line.strip_prefix(marker) {
            if let Some((previous, body)) = open.take() {
                out.push((previous, trim_newline(&text[body..start])));
            }
            open = Some((trim_newline(head), offset));
        }
    }
    if let Some((head, body)) = open {
        out.push((head, trim_newline(&text[body.min(text.len())..])));
    }
    out
}

fn trim_newline(text: &str) -> &str {
    let text = text.strip_suffix('\n').unwrap_or(text);
    text.strip_suffix('\r').unwrap_or(text)
}
