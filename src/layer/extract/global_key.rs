//! [`GlobalKey`]: one key for every request.

use super::{Key, KeyError, KeyExtractor, RequestHead};

/// One key for every request: a global budget for the whole service.
#[derive(Debug, Clone)]
pub struct GlobalKey(Key);

impl GlobalKey {
    /// Every request counts against `name`.
    pub fn new(name: impl AsRef<str>) -> Self {
        GlobalKey(Key::new(name))
    }
}

impl Default for GlobalKey {
    fn default() -> Self {
        GlobalKey::new("global")
    }
}

impl KeyExtractor for GlobalKey {
    fn extract(&self, _req: &RequestHead<'_>) -> Result<Key, KeyError> {
        Ok(self.0.clone())
    }
}
