//! The merge methods, their parameters (name, scope, default) and input contracts, as mergekit
//! 0.1.5's registry defines them, plus taskloom's additions on the task-arithmetic family.

use super::recipe::Recipe;
use super::setting::Scalar;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Linear,
    TaskArithmetic,
    Ties,
    DareLinear,
    DareTies,
    Breadcrumbs,
    BreadcrumbsTies,
    Della,
    DellaLinear,
    Slerp,
    ModelStock,
    Passthrough,
    /// taskloom: PCB merging (see [`super::pcb`]).
    Pcb,
}

/// How each task vector is thinned before it is combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sparsify {
    /// Keep the `⌊density·n⌋` (at least 1) largest magnitudes (TIES).
    Magnitude,
    /// Keep each entry with probability `density` (DARE).
    Random,
    /// Drop the `⌊gamma·n⌋` largest magnitudes, then the smallest, leaving `⌊density·n⌋` (Breadcrumbs).
    Outliers,
    /// Keep with a probability ramping from `density−ε` to `density+ε` by magnitude rank along dim 1 (DELLA).
    Della,
}

/// The generalized-task-arithmetic family: sparsify, weight, (elect a sign), sum, normalize, scale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gta {
    pub sparsify: Option<Sparsify>,
    pub consensus: bool,
    pub default_normalize: bool,
    pub default_rescale: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// One value for the merge (per tensor): `normalize`, `lambda`, `t`, ...
    Shared,
    /// One value per input model, the base included (`linear`'s and `passthrough`'s).
    Input,
    /// One value per non-base input model: `weight`, `density`, ...
    NonBase,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Bool,
    Float,
}

#[derive(Clone, Debug)]
pub struct ParamSpec {
    pub name: &'static str,
    pub scope: Scope,
    pub kind: Kind,
    /// `None` = required (or, for `Optional`, simply absent).
    pub default: Option<Scalar>,
    pub required: bool,
}

const fn spec(name: &'static str, scope: Scope, kind: Kind) -> ParamSpec {
    ParamSpec { name, scope, kind, default: None, required: false }
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Method, String> {
        Ok(match s {
            "linear" => Method::Linear,
            "task_arithmetic" => Method::TaskArithmetic,
            "ties" => Method::Ties,
            "dare_linear" => Method::DareLinear,
            "dare_ties" => Method::DareTies,
            "breadcrumbs" => Method::Breadcrumbs,
            "breadcrumbs_ties" => Method::BreadcrumbsTies,
            "della" => Method::Della,
            "della_linear" => Method::DellaLinear,
            "slerp" => Method::Slerp,
            "model_stock" => Method::ModelStock,
            "passthrough" => Method::Passthrough,
            "pcb" => Method::Pcb,
            _ => {
                return Err(format!(
                    "merge_method: unknown method '{s}' (known: {})",
                    Method::ALL.iter().map(|m| m.name()).collect::<Vec<_>>().join(", ")
                ))
            }
        })
    }
}

impl Method {
    pub const ALL: [Method; 13] = [
        Method::Linear,
        Method::TaskArithmetic,
        Method::Ties,
        Method::DareLinear,
        Method::DareTies,
        Method::Breadcrumbs,
        Method::BreadcrumbsTies,
        Method::Della,
        Method::DellaLinear,
        Method::Slerp,
        Method::ModelStock,
        Method::Passthrough,
        Method::Pcb,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Method::Linear => "linear",
            Method::TaskArithmetic => "task_arithmetic",
            Method::Ties => "ties",
            Method::DareLinear => "dare_linear",
            Method::DareTies => "dare_ties",
            Method::Breadcrumbs => "breadcrumbs",
            Method::BreadcrumbsTies => "breadcrumbs_ties",
            Method::Della => "della",
            Method::DellaLinear => "della_linear",
            Method::Slerp => "slerp",
            Method::ModelStock => "model_stock",
            Method::Passthrough => "passthrough",
            Method::Pcb => "pcb",
        }
    }

    /// The task-arithmetic family's settings, or `None` for the other methods.
    pub fn gta(self) -> Option<Gta> {
        use Sparsify::*;
        let g = |sparsify, consensus, default_normalize, default_rescale| Some(Gta { sparsify, consensus, default_normalize, default_rescale });
        match self {
            Method::TaskArithmetic => g(None, false, false, false),
            Method::Ties => g(Some(Magnitude), true, true, false),
            Method::DareTies => g(Some(Random), true, false, true),
            Method::DareLinear => g(Some(Random), false, false, true),
            Method::Breadcrumbs => g(Some(Outliers), false, false, false),
            Method::BreadcrumbsTies => g(Some(Outliers), true, false, false),
            Method::Della => g(Some(Della), true, true, true),
            Method::DellaLinear => g(Some(Della), false, false, true),
            _ => None,
        }
    }

    /// Every parameter the method reads (mergekit's, then taskloom's additions).
    pub fn params(self) -> Vec<ParamSpec> {
        use Kind::*;
        use Scope::*;
        let num = |v: f64| Some(Scalar::Num(v));
        let boolean = |v: bool| Some(Scalar::Bool(v));
        let with = |mut p: ParamSpec, default: Option<Scalar>| {
            p.default = default;
            p
        };
        let required = |mut p: ParamSpec| {
            p.required = true;
            p
        };
        match self {
            Method::Linear => vec![required(spec("weight", Input, Float)), with(spec("normalize", Shared, Bool), boolean(true))],
            Method::Slerp => vec![required(spec("t", Shared, Float))],
            Method::ModelStock => vec![with(spec("filter_wise", Shared, Bool), boolean(false))],
            Method::Passthrough => vec![spec("scale", Input, Float)],
            Method::Pcb => vec![
                with(spec("weight", NonBase, Float), num(1.0)),
                with(spec("lambda", Shared, Float), num(1.0)),
                with(spec("pcb_ratio", Shared, Float), num(0.1)),
                with(spec("pcb_clip", Shared, Float), num(0.0001)),
            ],
            m => {
                let g = m.gta().expect("the rest are task-arithmetic methods");
                let mut v = vec![
                    with(spec("int8_mask", Shared, Bool), boolean(false)),
                    with(spec("normalize", Shared, Bool), boolean(g.default_normalize)),
                    with(spec("rescale", Shared, Bool), boolean(g.default_rescale)),
                    with(spec("lambda", Shared, Float), num(1.0)),
                    required(spec("weight", NonBase, Float)),
                    with(spec("density", NonBase, Float), num(1.0)),
                ];
                if g.sparsify == Some(Sparsify::Outliers) {
                    v.push(with(spec("gamma", NonBase, Float), num(0.01)));
                }
                if g.sparsify == Some(Sparsify::Della) {
                    v.push(with(spec("epsilon", NonBase, Float), num(0.15)));
                }
                // taskloom: LiNeS depth scaling of the merged task vector, λ(t) = α + β·t.
                v.push(with(spec("lines_alpha", Shared, Float), num(1.0)));
                v.push(with(spec("lines_beta", Shared, Float), num(0.0)));
                // taskloom: TALL masks (per task, written next to the model) and Consensus merging.
                v.push(with(spec("tall_masks", Shared, Bool), boolean(false)));
                v.push(with(spec("tall_lambda", NonBase, Float), num(0.6)));
                v.push(with(spec("consensus_k", Shared, Float), num(0.0)));
                v
            }
        }
    }

    /// mergekit's input contracts: a base where required, input counts.
    pub fn check_inputs(self, r: &Recipe) -> Result<(), String> {
        for (i, s) in r.slices.iter().enumerate() {
            let base = s.base_model.or(r.base_model);
            let has_base = base.is_some_and(|b| s.sources.iter().any(|x| x.model == b));
            let n = s.sources.len();
            let at = if r.whole_models { String::new() } else { format!("slices[{i}]: ") };
            match self {
                Method::Passthrough if n != 1 => return Err(format!("{at}passthrough takes exactly one model per slice, got {n}")),
                Method::Slerp if !has_base || n != 2 => return Err(format!("{at}slerp needs a base_model and exactly one other model")),
                Method::Pcb if !has_base || n < 2 => return Err(format!("{at}pcb needs a base_model and at least one other model")),
                Method::ModelStock if !has_base || n < 3 => return Err(format!("{at}model_stock needs a base_model and at least two other models")),
                m if m.gta().is_some() && !has_base => return Err(format!("{at}{} needs a base_model", m.name())),
                _ => {}
            }
        }
        Ok(())
    }
}
