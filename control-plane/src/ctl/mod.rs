//! What `sanectl` computes beyond plain API calls: tables of resources
//! ([`table`]), what an apply would change ([`diff`]), everything that
//! applies to one service ([`describe`]) and where a request would go
//! ([`explain`], with the proxy crate's own route selection, so it reports
//! what the proxy does rather than a second opinion). Each takes what it
//! needs from the API through [`crate::client::ApiClient`] and returns plain
//! data the binary prints as a table, JSON or YAML.

pub mod describe;
pub mod diff;
pub mod explain;
pub mod table;

use crate::error::Error;
use crate::resource::{Kind, Resource};
use serde_json::Value;

/// The `items` of a list answer as typed resources of `kind`.
pub fn items(kind: Kind, list: &Value) -> Result<Vec<Resource>, Error> {
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| {
            Resource::from_json(kind, v.to_string().as_bytes()).map_err(|e| Error::Ctl {
                field: format!("{} from the API", kind.plural()),
                message: e.to_string(),
            })
        })
        .collect()
}
