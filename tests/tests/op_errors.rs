//! Typed errors from ops: inputs of the wrong shape, dtype or arity are `BAD_INPUT` on every device,
//! sizes past a GPU kernel's limits `UNSUPPORTED`, and an output above the binding limit
//! `BufferTooLarge`; never a panic and never a wrong result.

use taskloom::{Device, Op, TensorData};
use taskloom_tests::gpu_or_skip;

#[test]
fn oversized_binding_is_a_typed_error() {
    let Some(dev) = gpu_or_skip("oversized binding") else { return };
    // 2^20 ids x 4096 columns of f32 = 16 GiB of output: above any adapter's binding limit.
    let table = dev.upload(&TensorData::f32(&[2, 4096], vec![0.5; 8192]).unwrap()).unwrap();
    let ids = dev.upload(&TensorData::u32(&[1 << 20], vec![1; 1 << 20]).unwrap()).unwrap();
    match dev.exec(&Op::Embedding, &[&table, &ids]) {
        Err(taskloom::Error::BufferTooLarge { bytes, limit, .. }) => assert!(bytes > limit),
        other => panic!("expected BufferTooLarge, got {other:?}"),
    }
    dev.flush().unwrap();
}

#[test]
fn bad_op_inputs_are_typed_errors_on_every_device() {
    let mut devices = vec![Device::cpu()];
    devices.extend(gpu_or_skip("bad op inputs"));
    for dev in devices {
        let a = dev.upload(&TensorData::f32(&[2, 3], vec![0.0; 6]).unwrap()).unwrap();
        let b = dev.upload(&TensorData::f32(&[4, 5], vec![0.0; 20]).unwrap()).unwrap();
        let ids = dev.upload(&TensorData::u32(&[2], vec![0, 1]).unwrap()).unwrap();
        let err = |op: Op, ins: &[&taskloom::Tensor]| dev.exec(&op, ins).expect_err(op.name()).code();
        assert_eq!(err(Op::Matmul { trans_b: false }, &[&a, &b]), "BAD_INPUT");
        assert_eq!(err(Op::Add, &[&a, &b]), "BAD_INPUT");
        assert_eq!(err(Op::TopK { k: 4 }, &[&a]), "BAD_INPUT");
        assert_eq!(err(Op::Softmax, &[&ids]), "BAD_INPUT");
        assert_eq!(err(Op::LayerNorm { eps: 0.0 }, &[&a, &a, &a]), "BAD_INPUT");
        assert_eq!(err(Op::Attention { causal: true, scale: 1.0 }, &[&a, &a, &a]), "BAD_INPUT");
        assert_eq!(err(Op::Silu, &[]), "BAD_INPUT");
        // MoE bucketing: idx must be u32 [R, K], E in 1..=1024; the grouped matmul's offsets must be
        // [E + 2] for w [E, N, Cin] and order [R, K] must agree with x.
        let idx2 = dev.upload(&TensorData::u32(&[2, 1], vec![0, 1]).unwrap()).unwrap();
        assert_eq!(err(Op::MoeBucket { experts: 4 }, &[&a]), "BAD_INPUT");
        assert_eq!(err(Op::MoeBucket { experts: 4 }, &[&ids]), "BAD_INPUT");
        assert_eq!(err(Op::MoeBucket { experts: 0 }, &[&idx2]), "BAD_INPUT");
        assert_eq!(err(Op::MoeBucket { experts: 1025 }, &[&idx2]), "BAD_INPUT");
        let bk = dev.exec(&Op::MoeBucket { experts: 4 }, &[&idx2]).unwrap();
        let wt = |d: &[usize]| dev.upload(&TensorData::f32(d, vec![0.0; d.iter().product()]).unwrap()).unwrap();
        let (w4, w5) = (wt(&[4, 5, 3]), wt(&[5, 5, 3]));
        assert!(dev.exec(&Op::GroupedMatmul, &[&a, &w4, &bk[0], &bk[1]]).is_ok());
        assert_eq!(err(Op::GroupedMatmul, &[&a, &w5, &bk[0], &bk[1]]), "BAD_INPUT", "offsets for another E");
        assert_eq!(err(Op::GroupedMatmul, &[&wt(&[2, 4]), &w4, &bk[0], &bk[1]]), "BAD_INPUT", "x of another Cin");
        if matches!(dev, Device::Cpu(_)) {
            // Buckets that did not come from MoeBucket: the CPU checks them (the GPU clamps its reads).
            let bad = dev.upload(&TensorData::u32(&[6], vec![0, 2, 1, 2, 2, 2]).unwrap()).unwrap();
            assert_eq!(err(Op::GroupedMatmul, &[&a, &w4, &bad, &bk[1]]), "BAD_INPUT", "falling offsets");
        }
        assert_eq!(err(Op::GroupedMatmul, &[&a, &w4, &bk[0], &ids]), "BAD_INPUT", "order of rank 1");
        assert_eq!(err(Op::GroupedMatmul, &[&a, &w4, &bk[1], &bk[0]]), "BAD_INPUT", "swapped offsets, order");
        assert_eq!(err(Op::GroupedMatmul, &[&a, &w4, &bk[0], &bk[1], &a]), "BAD_INPUT", "bias not [E, N]");
        assert_eq!(err(Op::GroupedMatmul, &[&a, &w4, &bk[0]]), "BAD_INPUT", "arity");
        // Multi-LoRA: x [2, 3], a [4, 2, 3], sel [2, 1]; y [2, 5], v [2, 1, 2], b [4, 5, 2], w [2, 1].
        let t = |d: &[usize]| dev.upload(&TensorData::f32(d, vec![0.0; d.iter().product()]).unwrap()).unwrap();
        let (a3, sel) = (t(&[4, 2, 3]), dev.upload(&TensorData::u32(&[2, 1], vec![0, 1]).unwrap()).unwrap());
        let (y, v, b3, w) = (t(&[2, 5]), t(&[2, 1, 2]), t(&[4, 5, 2]), t(&[2, 1]));
        let sel_f32 = t(&[2, 1]);
        assert!(dev.exec(&Op::LoraShrink, &[&a, &a3, &sel]).is_ok());
        assert!(dev.exec(&Op::LoraExpand, &[&y, &v, &b3, &sel, &w]).is_ok());
        for (what, ins) in [
            ("In mismatch", vec![&b, &a3, &sel]),
            ("a rank 2", vec![&a, &a, &sel]),
            ("sel rank 1", vec![&a, &a3, &ids]),
            ("M mismatch", vec![&t(&[3, 3]), &a3, &sel]),
            ("sel f32", vec![&a, &a3, &sel_f32]),
            ("a u32", vec![&a, &sel, &sel]),
            ("x u32", vec![&ids, &a3, &sel]),
            ("arity", vec![&a, &a3]),
        ] {
            assert_eq!(dev.exec(&Op::LoraShrink, &ins).expect_err(what).code(), "BAD_INPUT", "lora_shrink {what}");
        }
        let (v_r3, y6, w_k2, y_m3) = (t(&[2, 1, 3]), t(&[2, 6]), t(&[2, 2]), t(&[3, 5]));
        for (what, ins) in [
            ("Out mismatch", vec![&y6, &v, &b3, &sel, &w]),
            ("R mismatch", vec![&y, &v_r3, &b3, &sel, &w]),
            ("K mismatch in w", vec![&y, &v, &b3, &sel, &w_k2]),
            ("M mismatch", vec![&y_m3, &v, &b3, &sel, &w]),
            ("b rank 2", vec![&y, &v, &a, &sel, &w]),
            ("sel f32", vec![&y, &v, &b3, &sel_f32, &w]),
            ("w u32", vec![&y, &v, &b3, &sel, &sel]),
            ("arity", vec![&y, &v, &b3, &sel]),
        ] {
            assert_eq!(dev.exec(&Op::LoraExpand, &ins).expect_err(what).code(), "BAD_INPUT", "lora_expand {what}");
        }
        if matches!(dev, Device::Gpu(_)) {
            // Past the GPU kernels' rank limit: refused as unsupported, not run wrong.
            let (x1, a_big) = (t(&[1, 1]), t(&[1, 16385, 1]));
            let sel1 = dev.upload(&TensorData::u32(&[1, 1], vec![0]).unwrap()).unwrap();
            assert_eq!(dev.exec(&Op::LoraShrink, &[&x1, &a_big, &sel1]).expect_err("rank 16385").code(), "UNSUPPORTED");
        }
    }
}
