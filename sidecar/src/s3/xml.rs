//! The XML documents of the S3 API that the client reads and writes, parsed with quick-xml.
//!
//! Every parser returns a plain message on failure; the caller wraps it into
//! [`StoreError::InvalidResponse`](crate::store::StoreError::InvalidResponse) with the request name.

use std::borrow::Cow;
use std::time::SystemTime;

use percent_encoding::percent_decode_str;
use serde::Deserialize;

use crate::store::{CompletedPart, ListPage, ObjectMeta};

#[derive(Debug, Deserialize)]
struct ListBucketResult {
    #[serde(rename = "Contents", default)]
    contents: Vec<Contents>,
    #[serde(rename = "CommonPrefixes", default)]
    common_prefixes: Vec<CommonPrefix>,
    #[serde(rename = "IsTruncated", default)]
    is_truncated: Option<String>,
    #[serde(rename = "NextContinuationToken", default)]
    next_continuation_token: Option<String>,
    #[serde(rename = "EncodingType", default)]
    encoding_type: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Contents {
    #[serde(rename = "Key")]
    key: String,
    #[serde(rename = "Size", default)]
    size: u64,
    #[serde(rename = "ETag", default)]
    etag: String,
    #[serde(rename = "LastModified", default)]
    last_modified: Option<String>,
}

#[derive(Debug, Deserialize)]
struct CommonPrefix {
    #[serde(rename = "Prefix")]
    prefix: String,
}

#[derive(Debug, Deserialize)]
struct ErrorDocument {
    #[serde(rename = "Code", default)]
    code: String,
    #[serde(rename = "Message", default)]
    message: String,
}

#[derive(Debug, Deserialize)]
struct InitiateResult {
    #[serde(rename = "UploadId")]
    upload_id: String,
}

#[derive(Debug, Deserialize)]
struct EtagResult {
    #[serde(rename = "ETag")]
    etag: String,
    #[serde(rename = "LastModified", default)]
    last_modified: Option<String>,
}

/// The code and message of an S3 `<Error>` document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct S3ErrorBody {
    pub(crate) code: String,
    pub(crate) message: String,
}

/// Parses an `<Error>` document; `None` when the body is not one.
pub(crate) fn parse_error(body: &[u8]) -> Option<S3ErrorBody> {
    let text = std::str::from_utf8(body).ok()?;
    if !is_error_document(text) {
        return None;
    }
    let doc: ErrorDocument = quick_xml::de::from_str(text).ok()?;
    Some(S3ErrorBody {
        code: doc.code,
        message: doc.message,
    })
}

/// Whether the root element of `text` is `<Error>` (a 200 answer can carry one).
pub(crate) fn is_error_document(text: &str) -> bool {
    let mut rest = text.trim_start_matches('\u{feff}').trim_start();
    // Skip the XML declaration and any comments before the root element.
    while rest.starts_with("<?") || rest.starts_with("<!--") {
        let close = if rest.starts_with("<?") { "?>" } else { "-->" };
        match rest.find(close) {
            Some(i) => rest = rest[i + close.len()..].trim_start(),
            None => return false,
        }
    }
    rest.starts_with("<Error>") || rest.starts_with("<Error ")
}

/// Parses a ListObjectsV2 answer. Keys are URL-decoded when the server says it encoded them.
pub(crate) fn parse_list(body: &[u8]) -> Result<ListPage, String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("listing is not UTF-8: {e}"))?;
    let doc: ListBucketResult =
        quick_xml::de::from_str(text).map_err(|e| format!("cannot parse ListBucketResult: {e}"))?;
    let encoded = doc
        .encoding_type
        .as_deref()
        .is_some_and(|t| t.eq_ignore_ascii_case("url"));
    let decode = |s: String| -> Result<String, String> { if encoded { url_decode(&s) } else { Ok(s) } };
    let mut objects = Vec::with_capacity(doc.contents.len());
    for c in doc.contents {
        objects.push(ObjectMeta {
            key: decode(c.key)?,
            size: c.size,
            etag: c.etag,
            last_modified: c.last_modified.as_deref().and_then(parse_xml_time),
        });
    }
    let mut common_prefixes = Vec::with_capacity(doc.common_prefixes.len());
    for p in doc.common_prefixes {
        common_prefixes.push(decode(p.prefix)?);
    }
    let truncated = doc
        .is_truncated
        .as_deref()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("true"));
    let next_token = match (truncated, doc.next_continuation_token) {
        (true, Some(t)) if !t.is_empty() => Some(t),
        (true, _) => return Err("listing is truncated but carries no NextContinuationToken".into()),
        (false, _) => None,
    };
    Ok(ListPage {
        objects,
        common_prefixes,
        next_token,
    })
}

/// Decodes `encoding-type=url` values: `+` is a space, `%XX` a byte; the result must be UTF-8.
fn url_decode(s: &str) -> Result<String, String> {
    let plus_as_space: Cow<'_, str> = if s.contains('+') {
        Cow::Owned(s.replace('+', " "))
    } else {
        s.into()
    };
    percent_decode_str(&plus_as_space)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| format!("URL-encoded key {s:?} does not decode to UTF-8"))
}

/// Parses the upload id out of an InitiateMultipartUploadResult.
pub(crate) fn parse_initiate(body: &[u8]) -> Result<String, String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("answer is not UTF-8: {e}"))?;
    let doc: InitiateResult = quick_xml::de::from_str(text)
        .map_err(|e| format!("cannot parse InitiateMultipartUploadResult: {e}"))?;
    if doc.upload_id.is_empty() {
        return Err("empty UploadId".into());
    }
    Ok(doc.upload_id)
}

/// Parses the ETag (and LastModified) out of CopyObjectResult, CopyPartResult or
/// CompleteMultipartUploadResult.
pub(crate) fn parse_etag_result(body: &[u8]) -> Result<(String, Option<SystemTime>), String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("answer is not UTF-8: {e}"))?;
    if is_error_document(text) {
        let e = parse_error(body).unwrap_or(S3ErrorBody {
            code: String::new(),
            message: String::new(),
        });
        return Err(format!(
            "200 answer carries an error document: {} {}",
            e.code, e.message
        ));
    }
    let doc: EtagResult =
        quick_xml::de::from_str(text).map_err(|e| format!("cannot parse result document: {e}"))?;
    Ok((doc.etag, doc.last_modified.as_deref().and_then(parse_xml_time)))
}

/// Builds a CompleteMultipartUpload request body.
pub(crate) fn complete_body(parts: &[CompletedPart]) -> String {
    let mut out = String::from("<CompleteMultipartUpload>");
    for p in parts {
        out.push_str("<Part><PartNumber>");
        out.push_str(&p.part_number.to_string());
        out.push_str("</PartNumber><ETag>");
        out.push_str(&quick_xml::escape::escape(p.etag.as_str()));
        out.push_str("</ETag></Part>");
    }
    out.push_str("</CompleteMultipartUpload>");
    out
}

/// Parses an ISO 8601 time as S3 writes it in XML (`2024-01-02T03:04:05.000Z`).
pub(crate) fn parse_xml_time(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(s.trim().trim_end_matches('Z')).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_encoded_listing_keys_decode_to_their_exact_bytes() {
        let body = br#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
<Name>b</Name><Prefix></Prefix><KeyCount>2</KeyCount><MaxKeys>1000</MaxKeys>
<EncodingType>url</EncodingType><IsTruncated>true</IsTruncated>
<Contents><Key>a+b%2Bc%25d%23%3F%22%C3%A9</Key><LastModified>2024-01-02T03:04:05.000Z</LastModified>
<ETag>&quot;abc&quot;</ETag><Size>7</Size></Contents>
<CommonPrefixes><Prefix>dir%20x/</Prefix></CommonPrefixes>
<NextContinuationToken>tok+/=</NextContinuationToken></ListBucketResult>"#;
        let page = parse_list(body).unwrap();
        assert_eq!(page.objects.len(), 1);
        assert_eq!(page.objects[0].key, "a b+c%d#?\"é");
        assert_eq!(page.objects[0].etag, "\"abc\"");
        assert_eq!(page.objects[0].size, 7);
        assert!(page.objects[0].last_modified.is_some());
        assert_eq!(page.common_prefixes, vec!["dir x/".to_string()]);
        assert_eq!(page.next_token.as_deref(), Some("tok+/="));
    }

    #[test]
    fn listing_without_encoding_type_keeps_keys_verbatim() {
        let body = b"<ListBucketResult><IsTruncated>false</IsTruncated>\
            <Contents><Key>a+b%20</Key><Size>1</Size><ETag>e</ETag></Contents></ListBucketResult>";
        let page = parse_list(body).unwrap();
        assert_eq!(page.objects[0].key, "a+b%20");
        assert_eq!(page.next_token, None);
    }

    #[test]
    fn truncated_listing_without_token_is_an_error() {
        let body = b"<ListBucketResult><IsTruncated>true</IsTruncated></ListBucketResult>";
        assert!(parse_list(body).is_err());
    }

    #[test]
    fn a_200_carrying_an_error_document_is_an_error() {
        let body =
            b"<?xml version=\"1.0\"?>\n<Error><Code>InternalError</Code><Message>boom</Message></Error>";
        let err = parse_etag_result(body).unwrap_err();
        assert!(err.contains("InternalError"), "{err}");
        let ok = parse_etag_result(b"<CopyObjectResult><ETag>\"x\"</ETag></CopyObjectResult>").unwrap();
        assert_eq!(ok.0, "\"x\"");
    }

    #[test]
    fn complete_body_escapes_etags() {
        let body = complete_body(&[CompletedPart {
            part_number: 1,
            etag: "\"a&b\"".into(),
        }]);
        assert!(body.contains("<PartNumber>1</PartNumber>"));
        assert!(body.contains("&amp;"), "{body}");
    }
}
