//! A pull parser over libyaml's events, for [`super::check`]: the same
//! parser `serde_yaml` runs (`unsafe-libyaml`), so the limits are checked
//! on exactly the structure `serde_yaml` will see, and the check can stop at
//! the first event past a limit.
//!
//! This is the one module of the crate with `unsafe` code: `unsafe-libyaml`
//! is a C translation whose API takes raw pointers. `serde_yaml` wraps it the
//! same way but keeps its wrapper private, and a different (pure Rust) YAML
//! parser would not see the same structure on every input (YAML 1.1 line
//! breaks such as NEL end a comment for libyaml but not for a YAML 1.2
//! parser), which would let a document pass the check with one nesting and
//! be loaded with another.

use std::ffi::CStr;
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use unsafe_libyaml as unsafe_sys;

/// What the check needs to know of one event.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Event {
    /// A sequence or mapping starts, maybe with an anchor.
    CollectionStart { anchor: Option<Vec<u8>> },
    /// The innermost open sequence or mapping ends.
    CollectionEnd,
    /// A scalar of `len` bytes (after unescaping), maybe with an anchor.
    Scalar { anchor: Option<Vec<u8>>, len: u64 },
    /// `*name`.
    Alias { anchor: Vec<u8> },
    /// A document starts (anchors are per document).
    DocumentStart,
    /// The stream starts, a document ends.
    Other,
    /// The end of the input.
    End,
}

/// Where an event starts: 1-based, as `serde_yaml` reports positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Mark {
    pub(super) line: u64,
    pub(super) column: u64,
}

/// libyaml's parser over a borrowed input.
pub(super) struct Events<'a> {
    // Boxed: libyaml's parser must not move once initialized.
    parser: Box<unsafe_sys::yaml_parser_t>,
    done: bool,
    _input: PhantomData<&'a [u8]>,
}

// === impl Events ===

impl<'a> Events<'a> {
    pub(super) fn new(input: &'a [u8]) -> Self {
        let mut parser = Box::<unsafe_sys::yaml_parser_t>::new_uninit();
        // SAFETY: `yaml_parser_initialize` writes every field of the parser
        // (it zeroes the struct first); it fails only if an allocation fails.
        // The input outlives the parser (`'a`), which only reads it.
        let parser = unsafe {
            if unsafe_sys::yaml_parser_initialize(parser.as_mut_ptr()).fail {
                std::alloc::handle_alloc_error(
                    std::alloc::Layout::new::<unsafe_sys::yaml_parser_t>(),
                );
            }
            let mut parser = parser.assume_init();
            unsafe_sys::yaml_parser_set_encoding(&mut *parser, unsafe_sys::YAML_UTF8_ENCODING);
            unsafe_sys::yaml_parser_set_input_string(
                &mut *parser,
                input.as_ptr(),
                input.len() as u64,
            );
            parser
        };
        Self {
            parser,
            done: false,
            _input: PhantomData,
        }
    }

    /// The next event, or `Err` with the position of a syntax error (whose
    /// description `serde_yaml` gives when it parses the same input).
    pub(super) fn next_event(&mut self) -> Result<(Event, Mark), Mark> {
        if self.done {
            return Ok((Event::End, Mark { line: 0, column: 0 }));
        }
        let mut event = MaybeUninit::<unsafe_sys::yaml_event_t>::uninit();
        // SAFETY: the parser is initialized and its input alive. On success
        // `yaml_parser_parse` initializes the event, which is read (anchor
        // strings are NUL-terminated and owned by the event) and then freed
        // once with `yaml_event_delete`. After a failure the parser is not
        // used again (`done`).
        unsafe {
            if self.parser.error != unsafe_sys::YAML_NO_ERROR
                || unsafe_sys::yaml_parser_parse(&mut *self.parser, event.as_mut_ptr()).fail
            {
                self.done = true;
                let m = self.parser.problem_mark;
                return Err(Mark {
                    line: m.line + 1,
                    column: m.column + 1,
                });
            }
            let e = event.as_mut_ptr();
            let anchor =
                |p: *const u8| (!p.is_null()).then(|| CStr::from_ptr(p.cast()).to_bytes().to_vec());
            let kind = match (*e).type_ {
                unsafe_sys::YAML_STREAM_END_EVENT => {
                    self.done = true;
                    Event::End
                }
                unsafe_sys::YAML_DOCUMENT_START_EVENT => Event::DocumentStart,
                unsafe_sys::YAML_SEQUENCE_START_EVENT => Event::CollectionStart {
                    anchor: anchor((*e).data.sequence_start.anchor),
                },
                unsafe_sys::YAML_MAPPING_START_EVENT => Event::CollectionStart {
                    anchor: anchor((*e).data.mapping_start.anchor),
                },
                unsafe_sys::YAML_SEQUENCE_END_EVENT | unsafe_sys::YAML_MAPPING_END_EVENT => {
                    Event::CollectionEnd
                }
                unsafe_sys::YAML_SCALAR_EVENT => Event::Scalar {
                    anchor: anchor((*e).data.scalar.anchor),
                    len: (*e).data.scalar.length,
                },
                unsafe_sys::YAML_ALIAS_EVENT => Event::Alias {
                    anchor: anchor((*e).data.alias.anchor).unwrap_or_default(),
                },
                _ => Event::Other,
            };
            let m = (*e).start_mark;
            unsafe_sys::yaml_event_delete(e);
            Ok((
                kind,
                Mark {
                    line: m.line + 1,
                    column: m.column + 1,
                },
            ))
        }
    }
}

impl Drop for Events<'_> {
    fn drop(&mut self) {
        // SAFETY: the parser was initialized in `new` and is deleted once.
        unsafe { unsafe_sys::yaml_parser_delete(&mut *self.parser) }
    }
}

impl std::fmt::Debug for Events<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events").field("done", &self.done).finish()
    }
}
