//! Protocols on an accepted connection: what the first bytes say
//! ([`detect`]), the mesh transport header sidecars put in front of every
//! connection to a peer ([`transport_header`]), HTTP helpers
//! ([`http`]), sending a body into an HTTP/2 stream ([`h2_body`], both
//! directions), request path normalization ([`path`]), serving HTTP on a
//! connection under its limits ([`server`]), the proxy's own admin and
//! health servers ([`local`]), opaque TCP forwarding ([`opaque`]) and a
//! listener's connection pressure ([`overload`]: timeouts that shrink as it
//! fills, silent connections evicted when it is full).

pub mod detect;
pub mod h2_body;
pub mod http;
pub mod io;
pub mod local;
pub mod opaque;
pub mod overload;
pub mod path;
pub mod server;
pub mod transport_header;
