//! A list of resources held in their protobuf encoding: for a large list
//! kept for reading now and then (a proxy's config dump, a merge with a new
//! file) rather than on every request.
//!
//! Decoded, a scale-test endpoint (`Endpoint` in its `Vec`, plus a heap
//! block per string) is ≈ 270 bytes and its service ≈ 270 more; encoded,
//! the two are ≈ 100 bytes of one shared buffer. Encoding is the xDS wire's
//! (`prost`), so a list decodes to exactly the resources it was made from.

use std::fmt;
use std::marker::PhantomData;

/// `T`s, each length-delimited, in one buffer.
pub struct EncodedList<T> {
    bytes: Box<[u8]>,
    len: usize,
    kind: PhantomData<fn() -> T>,
}

// === impl EncodedList ===

impl<T: prost::Message + Default> EncodedList<T> {
    /// Encodes `items` (the buffer is exactly as large as the encoding).
    pub fn new(items: &[T]) -> Self {
        let size: usize = items
            .iter()
            .map(|i| {
                let n = i.encoded_len();
                n + prost::length_delimiter_len(n)
            })
            .sum();
        let mut bytes = Vec::with_capacity(size);
        for item in items {
            item.encode_length_delimited(&mut bytes)
                .expect("the buffer was sized for every item");
        }
        Self {
            bytes: bytes.into_boxed_slice(),
            len: items.len(),
            kind: PhantomData,
        }
    }

    /// The items, decoded.
    pub fn decode(&self) -> Vec<T> {
        let mut buf = &self.bytes[..];
        let mut items = Vec::with_capacity(self.len);
        while !buf.is_empty() {
            // Only `new` writes the buffer, with the same `T`.
            items.push(T::decode_length_delimited(&mut buf).expect("encoded by EncodedList::new"));
        }
        items
    }
}

impl<T> EncodedList<T> {
    /// How many items the list holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if it holds none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The size of the encoding in bytes.
    pub fn encoded_bytes(&self) -> usize {
        self.bytes.len()
    }
}

impl<T> Default for EncodedList<T> {
    fn default() -> Self {
        Self {
            bytes: Box::default(),
            len: 0,
            kind: PhantomData,
        }
    }
}

impl<T> Clone for EncodedList<T> {
    fn clone(&self) -> Self {
        Self {
            bytes: self.bytes.clone(),
            len: self.len,
            kind: PhantomData,
        }
    }
}

impl<T> fmt::Debug for EncodedList<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncodedList")
            .field("len", &self.len)
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Endpoint, Service, ServicePort};

    fn endpoint(i: u32) -> Endpoint {
        Endpoint {
            service: format!("svc-{i}"),
            namespace: "shop".into(),
            address: format!("10.0.0.{i}"),
            port: 8080,
            ports: [("grpc".to_string(), 9090)].into(),
            proxy_port: 15006,
            identity: format!("spiffe://cluster.local/ns/shop/sa/svc-{i}"),
            labels: [("version".to_string(), "v1".to_string())].into(),
            weight: 3,
        }
    }

    #[test]
    fn a_list_decodes_to_the_items_it_was_made_from() {
        let endpoints: Vec<_> = (0..100).map(endpoint).collect();
        let list = EncodedList::new(&endpoints);
        assert_eq!(list.len(), 100);
        assert!(!list.is_empty());
        assert_eq!(list.decode(), endpoints);
        assert_eq!(list.clone().decode(), endpoints);

        let services = vec![
            Service {
                name: "a".into(),
                ports: vec![ServicePort {
                    name: "http".into(),
                    port: 80,
                    ..Default::default()
                }],
                hosts: vec!["a.example".into()],
                export_to: vec![".".into()],
                ..Default::default()
            },
            // All defaults: encodes to zero bytes, still one item.
            Service::default(),
        ];
        let list = EncodedList::new(&services);
        assert_eq!(list.len(), 2);
        assert_eq!(list.decode(), services);
    }

    #[test]
    fn the_encoding_is_smaller_than_the_decoded_items_and_exactly_sized() {
        let endpoints: Vec<_> = (0..100).map(endpoint).collect();
        let list = EncodedList::new(&endpoints);
        let per_item = list.encoded_bytes() / endpoints.len();
        println!("{per_item} bytes per encoded endpoint");
        assert!(per_item < std::mem::size_of::<Endpoint>(), "{per_item}");
        let wire: usize = endpoints.iter().map(prost::Message::encoded_len).sum();
        // One length byte per item (each is shorter than 128 bytes).
        assert_eq!(list.encoded_bytes(), wire + endpoints.len());
    }

    #[test]
    fn an_empty_list() {
        let list = EncodedList::<Endpoint>::new(&[]);
        assert!(list.is_empty());
        assert_eq!(list.encoded_bytes(), 0);
        assert!(list.decode().is_empty());
        assert!(EncodedList::<Service>::default().decode().is_empty());
    }
}
