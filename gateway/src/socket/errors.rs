//! Error traces between the socket protocol and JSON.
//!
//! octez writes each error of a trace with `Data_encoding.json`, whose binary form is
//! json-data-encoding's BSON (`json_repr_bson.ml`): a JSON object is a BSON document, an
//! array a BSON array, every number a BSON double, and none of BSON's extensions (int32,
//! dates, binary…) appear. The `bson` crate reads and writes those documents; this module only
//! maps the value trees, so the gateway can show a socket signer's errors in its JSON traces
//! and answer a socket client with its own.

use super::ErrorTrace;

impl ErrorTrace {
    /// A trace of these JSON errors (`{"kind":…, "id":…, "msg":…}` objects, as in the HTTP
    /// protocol's traces), each written as octez writes it. A value that is not an object is
    /// wrapped as `{"kind":"permanent","id":"failure","msg":<its text>}`, since
    /// json-data-encoding writes a bare value in a form of its own that readers need not know.
    pub fn from_json(errors: &[serde_json::Value]) -> ErrorTrace {
        let entries = errors
            .iter()
            .map(|e| {
                let doc = match e {
                    serde_json::Value::Object(map) => object(map),
                    other => {
                        let text = match other {
                            serde_json::Value::String(s) => s.clone(),
                            v => v.to_string(),
                        };
                        let mut d = bson::Document::new();
                        d.insert("kind", "permanent");
                        d.insert("id", "failure");
                        d.insert("msg", text);
                        d
                    }
                };
                let mut bytes = Vec::new();
                // Writing a document to a `Vec` fails only for a key holding a NUL byte,
                // which BSON cannot carry: a fixed entry says so instead.
                match doc.to_writer(&mut bytes) {
                    Ok(()) => bytes,
                    Err(_) => fallback_entry(),
                }
            })
            .collect();
        ErrorTrace(entries)
    }

    /// The trace as a JSON array, one value per error. An entry that is not a BSON document
    /// becomes an error object saying so, with its bytes in hex, so nothing a signer said is
    /// lost from the gateway's own trace.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Array(
            self.0
                .iter()
                .map(|raw| match bson::Document::from_reader(raw.as_slice()) {
                    Ok(doc) => document(&doc),
                    Err(e) => serde_json::json!({
                        "kind": "permanent",
                        "id": "signer_gateway.undecodable_signer_error",
                        "msg": format!("an error the signer sent is not a BSON document ({e}): {}", hex::encode(raw)),
                    }),
                })
                .collect(),
        )
    }

    /// The errors' messages (`msg`, else `id`), for logs and refusal texts.
    pub fn message(&self) -> String {
        let json = self.to_json();
        let parts: Vec<String> = json
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                match (
                    e.get("msg").and_then(|m| m.as_str()),
                    e.get("id").and_then(|i| i.as_str()),
                ) {
                    (Some(msg), _) => msg.to_string(),
                    (None, Some(id)) => id.to_string(),
                    (None, None) => e.to_string(),
                }
            })
            .collect();
        if parts.is_empty() {
            "an empty error trace".to_string()
        } else {
            parts.join("; ")
        }
    }
}

/// A minimal valid entry, for the one case a document cannot be written.
fn fallback_entry() -> Vec<u8> {
    let mut d = bson::Document::new();
    d.insert("kind", "permanent");
    d.insert("id", "failure");
    d.insert("msg", "an error whose JSON BSON cannot carry");
    let mut bytes = Vec::new();
    let _ = d.to_writer(&mut bytes);
    bytes
}

fn object(map: &serde_json::Map<String, serde_json::Value>) -> bson::Document {
    map.iter().map(|(k, v)| (k.clone(), value(v))).collect()
}

fn value(v: &serde_json::Value) -> bson::Bson {
    match v {
        serde_json::Value::Null => bson::Bson::Null,
        serde_json::Value::Bool(b) => bson::Bson::Boolean(*b),
        // json-data-encoding has one kind of number, the double.
        serde_json::Value::Number(n) => bson::Bson::Double(n.as_f64().unwrap_or(f64::NAN)),
        serde_json::Value::String(s) => bson::Bson::String(s.clone()),
        serde_json::Value::Array(a) => bson::Bson::Array(a.iter().map(value).collect()),
        serde_json::Value::Object(m) => bson::Bson::Document(object(m)),
    }
}

fn document(doc: &bson::Document) -> serde_json::Value {
    serde_json::Value::Object(doc.iter().map(|(k, v)| (k.clone(), json(v))).collect())
}

fn json(v: &bson::Bson) -> serde_json::Value {
    match v {
        bson::Bson::Null | bson::Bson::Undefined => serde_json::Value::Null,
        bson::Bson::Boolean(b) => serde_json::Value::Bool(*b),
        // Whole doubles read back as integers: octez's levels and rounds are integers.
        bson::Bson::Double(d) if d.fract() == 0.0 && d.abs() < 9.0e15 => serde_json::json!(*d as i64),
        bson::Bson::Double(d) => serde_json::Number::from_f64(*d).map_or(serde_json::Value::Null, Into::into),
        bson::Bson::Int32(i) => serde_json::json!(i),
        bson::Bson::Int64(i) => serde_json::json!(i),
        bson::Bson::String(s) => serde_json::Value::String(s.clone()),
        bson::Bson::Array(a) => serde_json::Value::Array(a.iter().map(json).collect()),
        bson::Bson::Document(d) => document(d),
        // Not written by json-data-encoding; shown rather than dropped.
        other => serde_json::Value::String(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_errors_survive_the_round_trip() {
        let errors = [
            json!({"kind": "temporary", "id": "failure", "msg": "level 5 below 100"}),
            json!({"kind": "permanent", "id": "x.y", "level": 5, "nested": {"a": [1.5, true, null, "s"]}}),
        ];
        let trace = ErrorTrace::from_json(&errors);
        assert_eq!(trace.0.len(), 2);
        assert_eq!(trace.to_json(), json!(errors));
        assert_eq!(trace.message(), "level 5 below 100; x.y");
    }

    /// A document of UTF-8 strings (type 0x02) as json-data-encoding writes one, hand-built
    /// from the BSON specification (bsonspec.org) and `json_repr_bson.ml`.
    fn strings_document(fields: &[(&str, &str)]) -> Vec<u8> {
        let mut doc = Vec::new();
        for (k, v) in fields {
            doc.push(0x02);
            doc.extend_from_slice(k.as_bytes());
            doc.push(0);
            doc.extend_from_slice(&(v.len() as i32 + 1).to_le_bytes());
            doc.extend_from_slice(v.as_bytes());
            doc.push(0);
        }
        doc.push(0);
        let mut bytes = (doc.len() as i32 + 4).to_le_bytes().to_vec();
        bytes.extend_from_slice(&doc);
        bytes
    }

    #[test]
    fn reads_octez_bytes() {
        // octez writes an error's fields in its encoding's order.
        let octez = strings_document(&[("kind", "temporary"), ("id", "failure"), ("msg", "oops")]);
        let trace = ErrorTrace(vec![octez]);
        assert_eq!(
            trace.to_json(),
            json!([{"kind": "temporary", "id": "failure", "msg": "oops"}])
        );
        // The gateway writes the same document (its fields in name order: BSON readers,
        // octez's included, look fields up by name).
        assert_eq!(
            ErrorTrace::from_json(&[json!({"kind": "temporary", "id": "failure", "msg": "oops"})]).0,
            vec![strings_document(&[
                ("id", "failure"),
                ("kind", "temporary"),
                ("msg", "oops")
            ])]
        );
    }

    #[test]
    fn numbers_are_doubles_and_bare_values_are_wrapped() {
        let trace = ErrorTrace::from_json(&[json!({"level": 7}), json!("just text")]);
        // 0x01 is BSON's double: json-data-encoding reads no other number type.
        assert_eq!(trace.0[0][4], 0x01);
        assert_eq!(
            trace.to_json(),
            json!([{"level": 7}, {"kind": "permanent", "id": "failure", "msg": "just text"}])
        );
    }

    #[test]
    fn garbage_is_reported_not_lost() {
        let trace = ErrorTrace(vec![vec![1, 2, 3], Vec::new()]);
        let json = trace.to_json();
        let arr = json.as_array().unwrap();
        assert_eq!(arr.len(), 2);
        assert_eq!(arr[0]["id"], "signer_gateway.undecodable_signer_error");
        assert!(arr[0]["msg"].as_str().unwrap().ends_with("010203"));
        assert_eq!(ErrorTrace(Vec::new()).message(), "an empty error trace");
    }
}
