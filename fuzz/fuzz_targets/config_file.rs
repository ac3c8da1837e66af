//! Config files as `sidestreamctl` reads them: any text as a JSON file and as
//! a YAML file (several documents), through the document shape and every
//! spec's validation. Every document is either loaded or reported, with the
//! file named; a loaded document's spec is valid.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use sidestream_control_plane::ctl::files::load_text;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for name in ["fuzz.json", "fuzz.yaml"] {
        let file = Path::new(name);
        let (loaded, problems) = load_text(file, text);
        for problem in &problems {
            assert_eq!(problem.file, name);
            assert!(!problem.message.is_empty(), "{problem:?}");
        }
        for document in &loaded {
            assert_eq!(document.file, file);
            assert!(document.index >= 1);
            match document.document.validate() {
                Ok(item) => assert_eq!(item, document.item),
                Err(error) => panic!("a loaded document does not validate: {error}"),
            }
        }
    }
});
