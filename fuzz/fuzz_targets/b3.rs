//! B3 propagation: the single `b3` header and the `x-b3-*` headers, any
//! names and values (input: `name: value` lines). A context that parses re-serialises (single and multi) to headers
//! that parse to the same context.
#![no_main]

#[path = "../common/text.rs"]
mod text;

use libfuzzer_sys::fuzz_target;
use sidestream_core::trace::b3::{self, B3};
use sidestream_core::HeaderList;

// Input: `name: value` lines (`b3`, `x-b3-traceid`, ...).
fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let headers = HeaderList::from_pairs(text::header_lines(input));
    for (name, value) in &headers.0 {
        if name == b3::SINGLE {
            check(b3::parse_single(value));
        }
    }
    if let Some(result) = b3::from_request(&headers) {
        check(result);
    }
    let multi_only = HeaderList(
        headers
            .0
            .iter()
            .filter(|(name, _)| !name.eq_ignore_ascii_case(b3::SINGLE))
            .cloned()
            .collect(),
    );
    if let Some(result) = b3::parse_multi(&multi_only) {
        check(result);
    }
});

fn check(result: Result<B3, b3::B3Error>) {
    let context = match result {
        Ok(B3::Context(context)) => context,
        Ok(B3::SamplingOnly(_)) | Err(_) => return,
    };
    let sampling = context.sampling.unwrap_or(b3::Sampling::Accept);
    let single = b3::single_header(
        &context.trace_id,
        &context.span_id,
        sampling,
        context.parent_span_id.as_ref(),
    );
    match b3::parse_single(&single) {
        Ok(B3::Context(again)) => {
            assert_eq!(again.trace_id, context.trace_id, "{single}");
            assert_eq!(again.span_id, context.span_id, "{single}");
            assert_eq!(again.parent_span_id, context.parent_span_id, "{single}");
            assert_eq!(again.sampling, Some(sampling), "{single}");
        }
        other => panic!("{single:?} parses to {other:?}"),
    }
    let multi = b3::multi_headers(
        &context.trace_id,
        &context.span_id,
        sampling,
        context.parent_span_id.as_ref(),
    );
    let headers = HeaderList(
        multi
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .collect(),
    );
    match b3::parse_multi(&headers) {
        Some(Ok(B3::Context(again))) => {
            assert_eq!(again.trace_id, context.trace_id, "{headers:?}");
            assert_eq!(again.span_id, context.span_id, "{headers:?}");
            assert_eq!(again.parent_span_id, context.parent_span_id, "{headers:?}");
            assert_eq!(again.sampling, Some(sampling), "{headers:?}");
        }
        other => panic!("{headers:?} parse to {other:?}"),
    }
}
