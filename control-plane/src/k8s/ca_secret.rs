//! The mesh CA from a Kubernetes Secret (`--ca-secret namespace/name`): every
//! replica reads the same Secret at start, so all of them sign with one CA
//! and any proxy trusts certificates issued by any replica.
//!
//! Two layouts are read, so the Secret can come from the tools that make
//! CAs:
//!
//! | Keys | Made by | Chain (signing CA first, up to the root) |
//! | --- | --- | --- |
//! | `tls.crt`, `tls.key` (+ `ca.crt`) | `kubectl create secret tls`, cert-manager | `tls.crt`, then `ca.crt` when it is not already in it |
//! | `ca-cert.pem`, `ca-key.pem` (+ `cert-chain.pem`, `root-cert.pem`) | Istio's `cacerts` plug-in CA | `cert-chain.pem` if present, else `ca-cert.pem` then `root-cert.pem` |
//!
//! The key never leaves this process and is never logged; a missing key or
//! a Secret that cannot be read is an error naming the Secret and the keys
//! it has.

use super::error::KubeError;
use crate::ca::CaPem;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use std::collections::BTreeMap;

/// `namespace/name` → its two parts.
pub fn parse_ref(text: &str) -> Result<(String, String), KubeError> {
    match text.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_string(), name.to_string()))
        }
        _ => Err(KubeError::CaSecret {
            secret: text.to_string(),
            reason: "expected namespace/name".into(),
        }),
    }
}

/// Reads the CA material of the Secret `namespace/name`.
pub async fn read(client: kube::Client, secret_ref: &str) -> Result<CaPem, KubeError> {
    let (ns, name) = parse_ref(secret_ref)?;
    let api: Api<Secret> = Api::namespaced(client, &ns);
    let secret = api.get(&name).await.map_err(|e| KubeError::CaSecret {
        secret: secret_ref.to_string(),
        reason: match &e {
            kube::Error::Api(r) if r.code == 404 => "not found".to_string(),
            kube::Error::Api(r) if r.code == 403 => format!(
                "forbidden ({}): the control plane's service account needs `get` on it",
                r.message
            ),
            _ => e.to_string(),
        },
    })?;
    from_secret(secret_ref, &secret)
}

/// The CA material of a Secret (see the module docs for the layouts).
pub fn from_secret(secret_ref: &str, secret: &Secret) -> Result<CaPem, KubeError> {
    let mut data: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in secret.data.iter().flatten() {
        if let Ok(text) = String::from_utf8(v.0.clone()) {
            data.insert(k.clone(), text);
        }
    }
    for (k, v) in secret.string_data.iter().flatten() {
        data.insert(k.clone(), v.clone());
    }
    let fail = |reason: String| KubeError::CaSecret {
        secret: secret_ref.to_string(),
        reason,
    };
    let get = |k: &str| data.get(k).filter(|v| !v.trim().is_empty());
    let (chain, key) = if let (Some(cert), Some(key)) = (get("tls.crt"), get("tls.key")) {
        (with_root(cert, get("ca.crt")), key.clone())
    } else if let (Some(cert), Some(key)) = (get("ca-cert.pem"), get("ca-key.pem")) {
        let chain = match get("cert-chain.pem") {
            Some(chain) => with_root(chain, get("root-cert.pem")),
            None => with_root(cert, get("root-cert.pem")),
        };
        (chain, key.clone())
    } else {
        let keys: Vec<&str> = data.keys().map(String::as_str).collect();
        return Err(fail(format!(
            "no CA in it: expected tls.crt + tls.key (+ ca.crt), or ca-cert.pem + ca-key.pem \
             (+ cert-chain.pem, root-cert.pem); it has {keys:?}"
        )));
    };
    Ok(CaPem {
        source: format!("secret {secret_ref}"),
        chain,
        key,
    })
}

/// `chain`, then `root` unless the chain already holds it.
fn with_root(chain: &str, root: Option<&String>) -> String {
    let mut out = chain.trim_end().to_string();
    out.push('\n');
    if let Some(root) = root {
        let normalize = |s: &str| s.split_whitespace().collect::<String>();
        if !normalize(chain).contains(&normalize(root)) {
            out.push_str(root.trim_end());
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn secret(pairs: &[(&str, &str)]) -> Secret {
        Secret {
            data: Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn both_layouts_are_read_and_the_root_is_appended_once() {
        let s = secret(&[
            ("tls.crt", "INTER\n"),
            ("tls.key", "KEY"),
            ("ca.crt", "ROOT"),
        ]);
        let pem = from_secret("ns/ca", &s).unwrap();
        assert_eq!(pem.chain, "INTER\nROOT\n");
        assert_eq!(pem.key, "KEY");
        assert_eq!(pem.source, "secret ns/ca");
        // A self-signed CA: ca.crt is tls.crt.
        let s = secret(&[
            ("tls.crt", "ROOT"),
            ("tls.key", "KEY"),
            ("ca.crt", "ROOT\n"),
        ]);
        assert_eq!(from_secret("ns/ca", &s).unwrap().chain, "ROOT\n");
        let s = secret(&[
            ("ca-cert.pem", "INTER"),
            ("ca-key.pem", "KEY"),
            ("cert-chain.pem", "INTER\nROOT"),
            ("root-cert.pem", "ROOT"),
        ]);
        assert_eq!(
            from_secret("istio-system/cacerts", &s).unwrap().chain,
            "INTER\nROOT\n"
        );
    }

    #[test]
    fn a_secret_without_a_ca_or_a_bad_reference_is_named() {
        let err = from_secret("ns/ca", &secret(&[("tls.crt", "X")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("ns/ca"), "{err}");
        assert!(err.contains("[\"tls.crt\"]"), "{err}");
        for bad in ["ca", "/ca", "ns/", "a/b/c"] {
            let err = parse_ref(bad).unwrap_err().to_string();
            assert!(err.contains("namespace/name"), "{err}");
        }
    }
}
