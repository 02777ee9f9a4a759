//! [`MatchedRoute`]: keys by the route axum matched.

use super::{Key, KeyError, KeyExtractor, RequestHead};

/// Keys by the route axum matched (`/users/{id}`, not `/users/7`), so every route has its
/// own budget. Needs the layer inside an axum `Router`.
#[derive(Debug, Clone, Copy, Default)]
pub struct MatchedRoute;

impl KeyExtractor for MatchedRoute {
    fn extract(&self, req: &RequestHead<'_>) -> Result<Key, KeyError> {
        req.extensions
            .get::<axum::extract::MatchedPath>()
            .map(|p| Key::new(p.as_str()))
            .ok_or(KeyError::MissingMatchedPath)
    }
}
