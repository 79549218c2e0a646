//! Typed reads of JSON object fields that record a [`FieldError`] instead of failing, so that one
//! pass over a descriptor reports every problem at once.

use oak_api::FieldError;
use serde_json::{Map, Value};

/// Field name used for an error about the whole document, whose path is empty.
pub(super) const ROOT: &str = "$";

/// Whether a field must be present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Need {
    Required,
    Optional,
}

/// `path.key`, or just `key` at the document root.
pub(super) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// `path[i]`.
pub(super) fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// The name an error about the value at `path` itself is reported under.
pub(super) fn field_name(path: &str) -> String {
    if path.is_empty() {
        ROOT.to_string()
    } else {
        path.to_string()
    }
}

pub(super) fn push(errors: &mut Vec<FieldError>, path: &str, message: impl Into<String>) {
    errors.push(FieldError::new(field_name(path), message));
}

/// Compact JSON text of an offending value, shortened so that a huge input cannot blow up the
/// error body.
pub(super) fn show(v: &Value) -> String {
    const MAX: usize = 60;
    let text = v.to_string();
    if text.chars().count() <= MAX {
        return text;
    }
    let mut short: String = text.chars().take(MAX).collect();
    short.push_str("...");
    short
}

/// [`show`] for a string, quoted like JSON.
pub(super) fn show_str(s: &str) -> String {
    show(&Value::String(s.to_string()))
}

pub(super) fn type_error(errors: &mut Vec<FieldError>, path: &str, expected: &str, got: &Value) {
    push(errors, path, format!("expected {expected}, got {}", show(got)));
}

/// The fields of one JSON object found at `path`.
#[derive(Clone, Copy)]
pub(super) struct Fields<'a> {
    pub map: &'a Map<String, Value>,
    pub path: &'a str,
}

impl<'a> Fields<'a> {
    /// `v` as an object, or an error at `path` when it is anything else.
    pub fn of(v: &'a Value, path: &'a str, errors: &mut Vec<FieldError>) -> Option<Self> {
        match v.as_object() {
            Some(map) => Some(Self { map, path }),
            None => {
                type_error(errors, path, "an object", v);
                None
            }
        }
    }

    pub fn path_of(&self, key: &str) -> String {
        join(self.path, key)
    }

    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key)
    }

    fn present(&self, key: &str, need: Need, errors: &mut Vec<FieldError>) -> Option<&'a Value> {
        let v = self.map.get(key);
        if v.is_none() && need == Need::Required {
            push(errors, &self.path_of(key), "is required");
        }
        v
    }

    pub fn string(&self, key: &str, need: Need, errors: &mut Vec<FieldError>) -> Option<&'a str> {
        let v = self.present(key, need, errors)?;
        match v.as_str() {
            Some(s) => Some(s),
            None => {
                type_error(errors, &self.path_of(key), "a string", v);
                None
            }
        }
    }

    /// A string that must also not be empty when present.
    pub fn non_empty_string(&self, key: &str, need: Need, errors: &mut Vec<FieldError>) -> Option<&'a str> {
        let s = self.string(key, need, errors)?;
        if s.is_empty() {
            push(errors, &self.path_of(key), "must not be empty");
            return None;
        }
        Some(s)
    }

    pub fn boolean(&self, key: &str, errors: &mut Vec<FieldError>) -> Option<bool> {
        let v = self.map.get(key)?;
        match v.as_bool() {
            Some(b) => Some(b),
            None => {
                type_error(errors, &self.path_of(key), "a boolean", v);
                None
            }
        }
    }

    /// An optional integer ≥ 0 that fits the `u64` it is stored in; floats such as `1.0` are
    /// refused because they would not deserialize into it.
    pub fn count(&self, key: &str, errors: &mut Vec<FieldError>) -> Option<u64> {
        let v = self.map.get(key)?;
        match v.as_u64() {
            Some(n) => Some(n),
            None => {
                push(errors, &self.path_of(key), format!("{} is not an integer >= 0", show(v)));
                None
            }
        }
    }

    /// An optional JSON number of any kind.
    pub fn number(&self, key: &str, errors: &mut Vec<FieldError>) -> Option<f64> {
        let v = self.map.get(key)?;
        match v.as_f64() {
            Some(n) => Some(n),
            None => {
                type_error(errors, &self.path_of(key), "a number", v);
                None
            }
        }
    }

    pub fn array(&self, key: &str, need: Need, errors: &mut Vec<FieldError>) -> Option<&'a [Value]> {
        let v = self.present(key, need, errors)?;
        match v.as_array() {
            Some(items) => Some(items.as_slice()),
            None => {
                type_error(errors, &self.path_of(key), "an array", v);
                None
            }
        }
    }

    /// An array whose elements are all strings; `None` (with one error per bad element) otherwise,
    /// so callers can index the result like the JSON array.
    pub fn strings(&self, key: &str, need: Need, errors: &mut Vec<FieldError>) -> Option<Vec<&'a str>> {
        let items = self.array(key, need, errors)?;
        let path = self.path_of(key);
        let mut out = Vec::with_capacity(items.len());
        let mut all_strings = true;
        for (i, item) in items.iter().enumerate() {
            match item.as_str() {
                Some(s) => out.push(s),
                None => {
                    all_strings = false;
                    type_error(errors, &index(&path, i), "a string", item);
                }
            }
        }
        all_strings.then_some(out)
    }

    pub fn object(&self, key: &str, need: Need, errors: &mut Vec<FieldError>) -> Option<&'a Map<String, Value>> {
        let v = self.present(key, need, errors)?;
        match v.as_object() {
            Some(map) => Some(map),
            None => {
                type_error(errors, &self.path_of(key), "an object", v);
                None
            }
        }
    }
}
