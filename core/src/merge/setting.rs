//! mergekit parameter settings: a scalar, a gradient (a list interpolated across layers), or a list
//! of `{filter, value}` conditions picked by tensor name. Evaluation follows mergekit 0.1.5
//! `config.evaluate_setting` exactly:
//!
//! - a gradient of numbers at layer position `t ∈ [0, 1]`: `s = t·(len−1)`, `i0 = ⌊s⌋`,
//!   `i1 = min(len−1, i0+1)`, value `= (1−frac)·v[i0] + frac·v[i1]` (in f64);
//!   a gradient of booleans or strings picks `v[⌊t·(len−1)⌋]`;
//! - conditions are tried in order; the first whose `filter` is absent, `"*"`, or a **substring**
//!   of the tensor name wins; none matching means "not set here" (the next scope is asked).
//!
//! `t` is `layer / (layers_in_slice − 1)` for layer tensors (1 for a one-layer slice) and 0 for
//! every other tensor (embeddings, final norm, head), as mergekit's planner does.

use serde_yaml_ng::Value;

#[derive(Clone, Debug, PartialEq)]
pub enum Scalar {
    Num(f64),
    Bool(bool),
    Str(String),
}

impl Scalar {
    fn from_yaml(v: &Value) -> Option<Scalar> {
        match v {
            Value::Number(n) => n.as_f64().map(Scalar::Num),
            Value::Bool(b) => Some(Scalar::Bool(*b)),
            Value::String(s) => Some(Scalar::Str(s.clone())),
            _ => None,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Scalar::Num(n) => n.to_string(),
            Scalar::Bool(b) => b.to_string(),
            Scalar::Str(s) => format!("'{s}'"),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Setting {
    Scalar(Scalar),
    /// A list of scalars, interpolated across layers.
    Gradient(Vec<Scalar>),
    /// `[{filter: substring, value: setting}, ...]`, first match wins.
    Conditional(Vec<(Option<String>, Setting)>),
    /// An empty list: never set.
    Empty,
}

impl Setting {
    /// Parses a YAML value; `Err` says what is wrong (the caller adds where).
    pub fn from_yaml(v: &Value) -> Result<Setting, String> {
        if let Some(s) = Scalar::from_yaml(v) {
            return Ok(Setting::Scalar(s));
        }
        match v {
            Value::Sequence(items) if items.is_empty() => Ok(Setting::Empty),
            Value::Sequence(items) => {
                if let Some(s) = items.iter().map(Scalar::from_yaml).collect::<Option<Vec<_>>>() {
                    return Ok(Setting::Gradient(s));
                }
                let conds = items.iter().map(condition).collect::<Result<Vec<_>, _>>()?;
                Ok(Setting::Conditional(conds))
            }
            Value::Mapping(_) => Ok(Setting::Conditional(vec![condition(v)?])),
            Value::Null => Err("a value is missing (null)".into()),
            _ => Err(format!("unsupported value {v:?}")),
        }
    }

    /// The value for `tensor` at layer position `t`, or `None` when this setting does not apply.
    pub fn eval(&self, tensor: &str, t: f64) -> Option<Scalar> {
        match self {
            Setting::Scalar(s) => Some(s.clone()),
            Setting::Empty => None,
            Setting::Gradient(v) => {
                let nums: Option<Vec<f64>> = v.iter().map(|s| if let Scalar::Num(n) = s { Some(*n) } else { None }).collect();
                match nums {
                    Some(n) => {
                        let scaled = t * (n.len() - 1) as f64;
                        let i0 = (scaled as usize).min(n.len() - 1);
                        let i1 = (n.len() - 1).min(i0 + 1);
                        let frac = scaled - i0 as f64;
                        Some(Scalar::Num((1.0 - frac) * n[i0] + frac * n[i1]))
                    }
                    None => Some(v[((t * (v.len() - 1) as f64) as usize).min(v.len() - 1)].clone()),
                }
            }
            Setting::Conditional(conds) => {
                for (filter, value) in conds {
                    let hit = match filter.as_deref() {
                        None | Some("*") => true,
                        Some(f) => !tensor.is_empty() && tensor.contains(f),
                    };
                    if hit {
                        return value.eval(tensor, t);
                    }
                }
                None
            }
        }
    }
}

fn condition(v: &Value) -> Result<(Option<String>, Setting), String> {
    let Value::Mapping(m) = v else {
        return Err(format!("a list must hold only scalars (a gradient) or only {{filter, value}} maps, found {v:?}"));
    };
    let mut filter = None;
    let mut value = None;
    for (k, x) in m {
        match k.as_str() {
            Some("filter") => {
                filter = match x {
                    Value::Null => None,
                    Value::String(s) => Some(s.clone()),
                    _ => return Err(format!("filter must be a string, found {x:?}")),
                }
            }
            Some("value") => value = Some(Setting::from_yaml(x)?),
            other => return Err(format!("unknown key {other:?} in a {{filter, value}} condition")),
        }
    }
    let value = value.ok_or("a {filter, value} condition has no value")?;
    Ok((filter, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(y: &str) -> Setting {
        Setting::from_yaml(&serde_yaml_ng::from_str(y).unwrap()).unwrap()
    }

    #[test]
    fn gradients_interpolate_like_mergekit() {
        let g = s("[0, 0.5, 0.3, 0.7, 1]");
        assert_eq!(g.eval("x", 0.0), Some(Scalar::Num(0.0)));
        assert_eq!(g.eval("x", 1.0), Some(Scalar::Num(1.0)));
        // t = 0.3 → scaled 1.2 → 0.8·0.5 + 0.2·0.3
        let Some(Scalar::Num(v)) = g.eval("x", 0.3) else { panic!() };
        assert!((v - (0.8 * 0.5 + 0.2 * 0.3)).abs() < 1e-15);
        assert_eq!(s("[true, false]").eval("x", 0.6), Some(Scalar::Bool(true)));
    }

    #[test]
    fn filters_are_substrings_first_match_wins() {
        let c = s("[{filter: self_attn, value: 0.1}, {filter: mlp, value: [0, 1]}, {value: 0.5}]");
        assert_eq!(c.eval("model.layers.0.self_attn.q_proj.weight", 0.0), Some(Scalar::Num(0.1)));
        assert_eq!(c.eval("model.layers.1.mlp.up_proj.weight", 1.0), Some(Scalar::Num(1.0)));
        assert_eq!(c.eval("model.norm.weight", 0.0), Some(Scalar::Num(0.5)));
        assert_eq!(s("[{filter: mlp, value: 1}]").eval("model.norm.weight", 0.0), None);
        assert!(Setting::from_yaml(&serde_yaml_ng::from_str("[{filter: a, valu: 1}]").unwrap()).is_err());
    }
}
