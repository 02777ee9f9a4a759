//! [`HeaderKey`]: keys by a request header, such as an API key.

use http::HeaderName;

use super::{Key, KeyError, KeyExtractor, RequestHead};

/// Keys by a request header, such as an API key. A missing header is
/// [`KeyError::MissingHeader`] (401 by default).
#[derive(Debug, Clone)]
pub struct HeaderKey {
    name: HeaderName,
}

impl HeaderKey {
    /// Keys by the value of `name`.
    pub fn new(name: HeaderName) -> Self {
        HeaderKey { name }
    }
}

impl KeyExtractor for HeaderKey {
    fn extract(&self, req: &RequestHead<'_>) -> Result<Key, KeyError> {
        let value = req
            .headers
            .get(&self.name)
            .ok_or_else(|| KeyError::MissingHeader(self.name.clone()))?;
        match value.to_str() {
            Ok(s) if !s.trim().is_empty() => Ok(Key::new(s.trim())),
            _ => Err(KeyError::InvalidHeader(self.name.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use http::StatusCode;

    use super::super::test_support::request_from;
    use super::*;

    #[test]
    fn header_key_reports_missing_and_empty() {
        let ex = HeaderKey::new(HeaderName::from_static("x-api-key"));
        let req = http::Request::new(());
        assert_eq!(
            ex.extract(&RequestHead::from(&req)).unwrap_err().status(),
            StatusCode::UNAUTHORIZED
        );
        let req = request_from("1.1.1.1:1", Some(("x-api-key", "  ")));
        assert!(matches!(
            ex.extract(&RequestHead::from(&req)),
            Err(KeyError::InvalidHeader(_))
        ));
        let req = request_from("1.1.1.1:1", Some(("x-api-key", "pro_123")));
        assert_eq!(
            ex.extract(&RequestHead::from(&req)).unwrap().as_str(),
            "pro_123"
        );
    }
}
