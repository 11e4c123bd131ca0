//! The method and path of the request an exchange served, from the first
//! bytes nginx wrote upstream (the kernel's copy, at most
//! `REQUEST_HEAD - 1` bytes): an HTTP/1.x request line (`proxy_pass`),
//! FastCGI params (`fastcgi_pass`), uwsgi vars (`uwsgi_pass`) or SCGI
//! headers (`scgi_pass`). gRPC's HTTP/2 frames and TLS records are not
//! readable: no request.
//!
//! Of the bytes only the method and the path leave [`decode`]: the query
//! string is cut inside it, and nothing else (headers, params, body) is
//! kept.

/// The request an upstream exchange served: `"request":{"method":"GET",
/// "path":"/api/export"}` in the JSON (with `"truncated":true` when the
/// path was longer than the kernel's copy).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Request {
    /// `GET`, `POST`...
    pub method: String,
    /// The path the upstream received, without its query string.
    pub path: String,
    /// The path was longer than the copy: this is its start.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

impl Request {
    /// `GET /api/export` in at most `room` columns: the path shortened from
    /// the left, as UNIX paths are (`GET …/reports/export`).
    pub fn to_text(&self, room: usize) -> String {
        let path_room = room.saturating_sub(self.method.len() + 1).max(8);
        let path = crate::sanitize::shorten_left(&self.path, path_room);
        let cut = if self.truncated { "…" } else { "" };
        format!("{} {path}{cut}", self.method)
    }
}

/// The longest method kept (nginx's own are at most 9 bytes).
const METHOD_MAX: usize = 32;

/// Decodes the start of a request; `None` when it is in none of the
/// protocols above, or too short to hold the method and path.
pub fn decode(head: &[u8]) -> Option<Request> {
    let request = match head.first()? {
        // FastCGI: version 1, then BEGIN_REQUEST.
        1 if head.get(1) == Some(&1) => fastcgi(head)?,
        b'0'..=b'9' => scgi(head)?,
        b'A'..=b'Z' => http(head)?,
        // uwsgi's modifier1: 0 for WSGI (nginx's default), other values for
        // other languages; the vars follow a 4-byte header either way.
        _ if head.len() >= 4 && head[3] == 0 => uwsgi(head)?,
        _ => return None,
    };
    valid(&request).then_some(request)
}

/// Whether the decoded parts look like a method and a path (not bytes of
/// another protocol that happened to parse).
fn valid(r: &Request) -> bool {
    !r.method.is_empty()
        && r.method.len() <= METHOD_MAX
        && r.method
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_')
        && (r.path.starts_with('/') || r.path.contains("://"))
}

/// The path of a URI: up to its query (or fragment), as text.
fn path_of(uri: &[u8]) -> String {
    let end = uri
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(uri.len());
    String::from_utf8_lossy(&uri[..end]).into_owned()
}

/// `METHOD SP URI SP HTTP/1.x CRLF`.
fn http(head: &[u8]) -> Option<Request> {
    let sp = head.iter().position(|&b| b == b' ')?;
    let method = std::str::from_utf8(&head[..sp]).ok()?.to_string();
    let rest = &head[sp + 1..];
    let end = rest
        .iter()
        .position(|&b| b == b' ' || b == b'\r' || b == b'\n');
    let uri = &rest[..end.unwrap_or(rest.len())];
    let query_seen = uri.contains(&b'?');
    Some(Request {
        method,
        path: path_of(uri),
        // Cut before the line's end, within the path itself.
        truncated: end.is_none() && !query_seen,
    })
}

/// Name/value pairs by name, from whichever encoding; the values asked for
/// only, so that nothing else is copied.
#[derive(Default)]
struct Vars {
    method: Option<String>,
    document_uri: Option<String>,
    path_info: Option<String>,
    request_uri: Option<String>,
    script_name: Option<String>,
    /// A pair was cut by the end of the copy.
    cut: bool,
}

impl Vars {
    fn take(&mut self, name: &[u8], value: &[u8]) {
        let slot = match name {
            b"REQUEST_METHOD" => {
                self.method = Some(String::from_utf8_lossy(value).into_owned());
                return;
            }
            b"DOCUMENT_URI" => &mut self.document_uri,
            b"PATH_INFO" => &mut self.path_info,
            b"REQUEST_URI" => &mut self.request_uri,
            b"SCRIPT_NAME" => &mut self.script_name,
            _ => return,
        };
        *slot = Some(path_of(value));
    }

    /// The path nginx matched its location on (`$document_uri`), else the
    /// closest the params give; `path_info_is_uri`: uwsgi's Debian params
    /// set `PATH_INFO` to `$document_uri` (FastCGI's is the part after the
    /// script).
    fn request(self, path_info_is_uri: bool) -> Option<Request> {
        let path = self
            .document_uri
            .or(if path_info_is_uri {
                self.path_info.filter(|p| !p.is_empty())
            } else {
                None
            })
            .or(self.request_uri)
            .or(self.script_name)?;
        Some(Request {
            method: self.method?,
            path,
            truncated: false,
        })
    }
}

/// FastCGI: records of `version, type, request id (2), content length (2),
/// padding length, reserved` and their content; PARAMS (type 4) hold pairs
/// of lengths (1 byte, or 4 with the top bit set) then name and value.
fn fastcgi(head: &[u8]) -> Option<Request> {
    const PARAMS: u8 = 4;
    let mut vars = Vars::default();
    let mut at = 0;
    let mut params = Vec::new();
    while let Some(header) = head.get(at..at + 8) {
        let len = u16::from_be_bytes([header[4], header[5]]) as usize;
        let padding = header[6] as usize;
        let body_start = at + 8;
        let body_end = (body_start + len).min(head.len());
        if header[1] == PARAMS {
            if len == 0 {
                break;
            }
            params.extend_from_slice(&head[body_start..body_end]);
        }
        if body_start + len > head.len() {
            break;
        }
        at = body_start + len + padding;
    }
    let mut rest = params.as_slice();
    while !rest.is_empty() {
        let Some((name_len, after)) = fastcgi_length(rest) else {
            vars.cut = true;
            break;
        };
        let Some((value_len, after)) = fastcgi_length(after) else {
            vars.cut = true;
            break;
        };
        if after.len() < name_len + value_len {
            vars.cut = true;
            break;
        }
        vars.take(&after[..name_len], &after[name_len..name_len + value_len]);
        rest = &after[name_len + value_len..];
    }
    vars.request(false)
}

/// A FastCGI name or value length and what follows it.
fn fastcgi_length(bytes: &[u8]) -> Option<(usize, &[u8])> {
    let first = *bytes.first()?;
    if first & 0x80 == 0 {
        return Some((first as usize, &bytes[1..]));
    }
    let four = bytes.get(..4)?;
    let len = u32::from_be_bytes([four[0] & 0x7f, four[1], four[2], four[3]]) as usize;
    Some((len, &bytes[4..]))
}

/// uwsgi: `modifier1, datasize (2, little endian), modifier2`, then vars of
/// `key size (2, LE), key, value size (2, LE), value`.
fn uwsgi(head: &[u8]) -> Option<Request> {
    let size = u16::from_le_bytes([*head.get(1)?, *head.get(2)?]) as usize;
    let end = (4 + size).min(head.len());
    let mut rest = head.get(4..end)?;
    let mut vars = Vars::default();
    let pair = |bytes: &[u8]| -> Option<(usize, usize)> {
        let n = u16::from_le_bytes([*bytes.first()?, *bytes.get(1)?]) as usize;
        (bytes.len() >= 2 + n).then_some((2, 2 + n))
    };
    while !rest.is_empty() {
        let Some((ks, ke)) = pair(rest) else { break };
        let name = &rest[ks..ke];
        let Some((vs, ve)) = pair(&rest[ke..]) else {
            break;
        };
        let value = &rest[ke + vs..ke + ve];
        vars.take(name, value);
        rest = &rest[ke + ve..];
    }
    vars.request(true)
}

/// SCGI: a netstring, `LENGTH:` then NUL-terminated names and values.
fn scgi(head: &[u8]) -> Option<Request> {
    let colon = head.iter().take(8).position(|&b| b == b':')?;
    let size: usize = std::str::from_utf8(&head[..colon]).ok()?.parse().ok()?;
    let end = (colon + 1 + size).min(head.len());
    let mut fields = head[colon + 1..end].split(|&b| b == 0);
    let mut vars = Vars::default();
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        vars.take(name, value);
    }
    vars.request(false)
}

/// The requests whose exchanges have not ended yet, by worker and first
/// request byte: taken when the exchange's record comes, looked at for the
/// exchanges under way. Bounded: past [`Waiting::CAP`] the oldest go (their
/// exchanges' records lost, or never to come).
#[derive(Debug, Default)]
pub struct Waiting {
    by: std::collections::BTreeMap<(u64, u32), Request>,
}

impl Waiting {
    /// Requests kept at most: an exchange's record comes when it ends, and
    /// tens of thousands are rarely under way at once.
    pub const CAP: usize = 65_536;

    /// The request of worker `pid`'s exchange that began at `req_first_ns`.
    pub fn insert(&mut self, pid: u32, req_first_ns: u64, request: Request) {
        if self.by.len() >= Self::CAP {
            self.by.pop_first();
        }
        self.by.insert((req_first_ns, pid), request);
    }

    /// Takes the request of the exchange that ended.
    pub fn take(&mut self, pid: u32, req_first_ns: u64) -> Option<Request> {
        if req_first_ns == 0 {
            return None;
        }
        self.by.remove(&(req_first_ns, pid))
    }

    /// The request of an exchange under way.
    pub fn get(&self, pid: u32, req_first_ns: u64) -> Option<&Request> {
        self.by.get(&(req_first_ns, pid))
    }

    /// How many wait.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FASTCGI: &[u8] = include_bytes!("../../testdata/requests/fastcgi.bin");
    const UWSGI: &[u8] = include_bytes!("../../testdata/requests/uwsgi.bin");
    const SCGI: &[u8] = include_bytes!("../../testdata/requests/scgi.bin");
    const HTTP: &[u8] = include_bytes!("../../testdata/requests/http.bin");

    fn request(method: &str, path: &str) -> Option<Request> {
        Some(Request {
            method: method.into(),
            path: path.into(),
            truncated: false,
        })
    }

    #[test]
    fn what_nginx_wrote_to_each_kind_of_upstream_gives_its_method_and_path() {
        assert_eq!(decode(HTTP), request("GET", "/h/api/export"));
        assert_eq!(decode(FASTCGI), request("GET", "/index.php"));
        assert_eq!(decode(UWSGI), request("GET", "/u/app/items"));
        assert_eq!(decode(SCGI), request("POST", "/s/x"));
    }

    #[test]
    fn the_query_string_leaves_in_no_part() {
        for head in [HTTP, FASTCGI, UWSGI, SCGI] {
            assert!(head.windows(6).any(|w| w == b"s3cret"));
            let r = decode(head).unwrap();
            let all = format!("{r:?}");
            assert!(!all.contains("s3cret") && !all.contains('?'), "{all}");
        }
    }

    #[test]
    fn a_copy_cut_short_keeps_what_it_can_and_says_so() {
        // The request line cut inside the path: its start, marked.
        let cut = decode(&HTTP[..10]).unwrap();
        assert_eq!((cut.path.as_str(), cut.truncated), ("/h/api", true));
        // Cut after the query began: the path is whole.
        let whole = decode(&HTTP[..20]).unwrap();
        assert_eq!(
            (whole.path.as_str(), whole.truncated),
            ("/h/api/export", false)
        );
        // FastCGI's params cut before DOCUMENT_URI: REQUEST_URI's path.
        let at = FASTCGI
            .windows(12)
            .position(|w| w == b"DOCUMENT_URI")
            .unwrap();
        assert_eq!(decode(&FASTCGI[..at]), request("GET", "/index.php"));
        // Cut before the method: nothing.
        let method = FASTCGI
            .windows(14)
            .position(|w| w == b"REQUEST_METHOD")
            .unwrap();
        assert_eq!(decode(&FASTCGI[..method]), None);
    }

    #[test]
    fn waiting_requests_are_taken_once_and_bounded() {
        let mut w = Waiting::default();
        let r = request("GET", "/a").unwrap();
        w.insert(7, 100, r.clone());
        assert_eq!(w.get(7, 100), Some(&r));
        assert_eq!(w.take(8, 100), None, "another worker's");
        assert_eq!(w.take(7, 100), Some(r.clone()));
        assert_eq!(w.take(7, 100), None);
        for i in 1..=Waiting::CAP as u64 + 10 {
            w.insert(1, i, r.clone());
        }
        assert_eq!(w.len(), Waiting::CAP);
        assert_eq!(w.take(1, 5), None, "the oldest went first");
        assert!(w.take(1, Waiting::CAP as u64 + 10).is_some());
    }

    #[test]
    fn unreadable_protocols_give_no_request() {
        // TLS's ClientHello, HTTP/2's preface (gRPC), nothing.
        assert_eq!(decode(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]), None);
        assert_eq!(decode(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), None);
        assert_eq!(decode(b""), None);
        assert_eq!(decode(b"\x01\x01"), None);
    }
}
