//! [`Both`]: two extractors at once, their keys joined.

use compact_str::CompactString;

use super::{Key, KeyError, KeyExtractor, RequestHead};

/// Separates the parts of a combined key. A control character: no header value, path or
/// IP text can contain it, so two different pairs never make the same key.
pub const KEY_SEPARATOR: char = '\u{1f}';

/// Two extractors at once: the key is both keys joined by [`KEY_SEPARATOR`] (route plus
/// API key gives each client a budget per route). Fails if either fails.
#[derive(Debug, Clone)]
pub struct Both<A, B>(pub A, pub B);

impl<A: KeyExtractor, B: KeyExtractor> KeyExtractor for Both<A, B> {
    fn extract(&self, req: &RequestHead<'_>) -> Result<Key, KeyError> {
        let a = self.0.extract(req)?;
        let b = self.1.extract(req)?;
        let mut out = CompactString::with_capacity(a.0.len() + 1 + b.0.len());
        out.push_str(&a.0);
        out.push(KEY_SEPARATOR);
        out.push_str(&b.0);
        Ok(Key(out))
    }
}

#[cfg(test)]
mod tests {
    use super::super::key_fn;
    use super::*;

    #[test]
    fn combined_keys_cannot_collide() {
        let a = key_fn(|_: &RequestHead<'_>| Ok(Key::new("/a:b")));
        let b = key_fn(|_: &RequestHead<'_>| Ok(Key::new("c")));
        let c = key_fn(|_: &RequestHead<'_>| Ok(Key::new("/a")));
        let d = key_fn(|_: &RequestHead<'_>| Ok(Key::new("b:c")));
        let req = http::Request::new(());
        let head = RequestHead::from(&req);
        assert_ne!(
            Both(a, b).extract(&head).unwrap(),
            Both(c, d).extract(&head).unwrap()
        );
    }
}
