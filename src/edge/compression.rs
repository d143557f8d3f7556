//! HTTP body compression: gzip and deflate bodies in (`Content-Encoding`) and out (`Accept-Encoding`).

use std::io::{Read, Write};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue};

use crate::core::error::{Error, Result};

/// A body encoding this server reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Gzip,
    /// HTTP's `deflate`: a zlib stream.
    Deflate,
}

impl Encoding {
    fn name(self) -> &'static str {
        match self {
            Encoding::Gzip => "gzip",
            Encoding::Deflate => "deflate",
        }
    }
}

/// The request's `Content-Encoding`; an unknown one is refused (415 would be the
/// textbook status; 400 with the reason is what V2 clients expect of a bad request).
pub fn content_encoding(headers: &HeaderMap) -> Result<Option<Encoding>> {
    let Some(v) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(None);
    };
    match v.to_str().map(|s| s.trim().to_ascii_lowercase()).as_deref() {
        Ok("gzip") | Ok("x-gzip") => Ok(Some(Encoding::Gzip)),
        Ok("deflate") => Ok(Some(Encoding::Deflate)),
        Ok("identity") | Ok("") => Ok(None),
        _ => Err(Error::invalid(format!(
            "Content-Encoding {v:?} is not supported; use gzip or deflate"
        ))),
    }
}

/// The encoding to answer in: the first of gzip, deflate that `Accept-Encoding` allows.
pub fn accepted(headers: &HeaderMap) -> Option<Encoding> {
    let v = headers.get(header::ACCEPT_ENCODING)?.to_str().ok()?;
    let allows = |name: &str| {
        v.split(',').any(|part| {
            let mut it = part.split(';');
            let token = it.next().unwrap_or("").trim();
            let q_zero = it.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    == Some(0.0)
            });
            token.eq_ignore_ascii_case(name) && !q_zero
        })
    };
    [Encoding::Gzip, Encoding::Deflate]
        .into_iter()
        .find(|e| allows(e.name()))
}

/// Inflates a compressed body, refusing to grow it past `limit` bytes.
pub fn decompress(raw: Bytes, encoding: Option<Encoding>, limit: usize) -> Result<Bytes> {
    let Some(encoding) = encoding else {
        return Ok(raw);
    };
    let reader: Box<dyn Read> = match encoding {
        Encoding::Gzip => Box::new(flate2::read::GzDecoder::new(&raw[..])),
        Encoding::Deflate => Box::new(flate2::read::ZlibDecoder::new(&raw[..])),
    };
    let mut out = Vec::new();
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| {
            Error::invalid(format!(
                "the {} request body cannot be decompressed: {e}",
                encoding.name()
            ))
        })?;
    if out.len() > limit {
        return Err(Error::PayloadTooLarge { limit });
    }
    Ok(Bytes::from(out))
}

/// Compresses a response body when the client accepts it; returns the body and
/// the `Content-Encoding` to send with it.
pub fn compress(body: Vec<u8>, encoding: Option<Encoding>) -> (Vec<u8>, Option<HeaderValue>) {
    let Some(encoding) = encoding else {
        return (body, None);
    };
    let level = flate2::Compression::fast();
    let compressed = match encoding {
        Encoding::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), level);
            e.write_all(&body).and_then(|_| e.finish())
        }
        Encoding::Deflate => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), level);
            e.write_all(&body).and_then(|_| e.finish())
        }
    };
    match compressed {
        Ok(c) => (c, Some(HeaderValue::from_static(encoding.name()))),
        // Writing to memory does not fail; if it did, the plain body still answers.
        Err(_) => (body, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_encoding_is_read_with_q_values() {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("br, deflate;q=0.5"),
        );
        assert_eq!(accepted(&h), Some(Encoding::Deflate));
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip;q=0, deflate"),
        );
        assert_eq!(accepted(&h), Some(Encoding::Deflate));
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        assert_eq!(accepted(&h), None);
    }

    #[test]
    fn round_trips_and_limits_the_inflated_size() {
        for e in [Encoding::Gzip, Encoding::Deflate] {
            let body = vec![b'x'; 10_000];
            let (c, _) = compress(body.clone(), Some(e));
            assert!(c.len() < 1000);
            let back = decompress(Bytes::from(c.clone()), Some(e), 10_000).unwrap();
            assert_eq!(&back[..], &body[..]);
            let err = decompress(Bytes::from(c), Some(e), 9_999).unwrap_err();
            assert!(matches!(err, Error::PayloadTooLarge { .. }));
        }
        let err =
            decompress(Bytes::from_static(b"not gzip"), Some(Encoding::Gzip), 100).unwrap_err();
        assert!(err.to_string().contains("cannot be decompressed"), "{err}");
    }
}
