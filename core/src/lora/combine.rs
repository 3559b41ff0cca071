//! PEFT `add_weighted_adapter` combinations (placeholder: being written).
