//! [`key_fn`]: a closure as a key extractor.

use super::{Key, KeyError, KeyExtractor, RequestHead};

/// A closure as a key extractor; see [`key_fn`].
#[derive(Clone)]
pub struct KeyFn<F>(F);

impl<F> std::fmt::Debug for KeyFn<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyFn(..)")
    }
}

/// Keys by a closure over the request head.
pub fn key_fn<F>(f: F) -> KeyFn<F>
where
    F: Fn(&RequestHead<'_>) -> Result<Key, KeyError> + Send + Sync + 'static,
{
    KeyFn(f)
}

impl<F> KeyExtractor for KeyFn<F>
where
    F: Fn(&RequestHead<'_>) -> Result<Key, KeyError> + Send + Sync + 'static,
{
    fn extract(&self, req: &RequestHead<'_>) -> Result<Key, KeyError> {
        (self.0)(req)
    }
}
