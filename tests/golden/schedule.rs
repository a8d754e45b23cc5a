//! The diffusion schedule and DDIM coefficients against the original sampler's arrays.
//! alphas_cumprod, timesteps and scale arrays must match to float32 rounding (1 ulp);
//! derived coefficients within 2e-7 absolute (the producer's float32 sqrt was off by 1 ulp
//! on some inputs, see the fixture README).

use super::support::golden::*;
use floor33::models::config::{ModelConfig, Variant};
use floor33::sampler::schedule::{ddim_step_count, DdimSchedule, NoiseSchedule};

fn assert_vec_close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * w.abs().max(1.0),
            "{what}[{i}]: got {g}, want {w}"
        );
    }
}

#[test]
fn alphas_cumprod_and_scale_arrays_match() {
    let s = tensors("schedule.safetensors");
    let vc2 = NoiseSchedule::from_config(&ModelConfig::vc2().diffusion);
    let ac: Vec<f64> = vc2.alphas_cumprod.iter().map(|&v| v as f64).collect();
    assert_vec_close(
        "alphas_cumprod",
        &ac,
        &values_f64(&get(&s, "alphas_cumprod")),
        1.2e-7,
    );
    for (variant, cfg) in [
        ("vc2", ModelConfig::vc2()),
        ("vc1_1024", ModelConfig::t2v_1024()),
        ("i2v", ModelConfig::i2v()),
    ] {
        let sched = NoiseSchedule::from_config(&cfg.diffusion);
        let arr: Vec<f64> = sched.scale_arr.unwrap().iter().map(|&v| v as f64).collect();
        assert_vec_close(
            &format!("{variant}.scale_arr"),
            &arr,
            &values_f64(&get(&s, &format!("{variant}.scale_arr"))),
            1.2e-7,
        );
    }
    assert!(
        NoiseSchedule::from_config(&ModelConfig::t2v_512().diffusion)
            .scale_arr
            .is_none()
    );
}

#[test]
fn ddim_coefficients_match() {
    let s = tensors("schedule.safetensors");
    for steps in [5usize, 50] {
        for (variant, v) in [("vc2", Variant::Vc2), ("vc1_1024", Variant::T2v1024)] {
            let sched = NoiseSchedule::from_config(&v.config().diffusion);
            for eta in [0.0, 1.0] {
                let ddim = DdimSchedule::new(&sched, steps, eta);
                // Fixture arrays are in index order; ours are in sampling order.
                let mut st = ddim.steps.clone();
                st.reverse();
                let p = format!("ddim{steps}");
                let ts: Vec<f64> = st.iter().map(|x| x.timestep as f64).collect();
                assert_eq!(ts, values_f64(&get(&s, &format!("{p}.timesteps"))));
                let col = |f: &dyn Fn(&floor33::sampler::schedule::DdimStep) -> f32| -> Vec<f64> {
                    st.iter().map(|x| f(x) as f64).collect()
                };
                assert_vec_close(
                    &format!("{p}.alphas"),
                    &col(&|x| x.alpha),
                    &values_f64(&get(&s, &format!("{p}.alphas"))),
                    1.2e-7,
                );
                assert_vec_close(
                    &format!("{p}.alphas_prev"),
                    &col(&|x| x.alpha_prev),
                    &values_f64(&get(&s, &format!("{p}.alphas_prev_f32"))),
                    1.2e-7,
                );
                let sig = if eta == 0.0 {
                    "sigmas_eta0_f32"
                } else {
                    "sigmas_eta1_f32"
                };
                assert_vec_close(
                    &format!("{p}.{sig}"),
                    &col(&|x| x.sigma),
                    &values_f64(&get(&s, &format!("{p}.{sig}"))),
                    2e-7,
                );
                assert_vec_close(
                    &format!("{p}.sqrt_one_minus_alphas"),
                    &col(&|x| x.sqrt_one_minus_alpha),
                    &values_f64(&get(&s, &format!("{p}.sqrt_one_minus_alphas"))),
                    2e-7,
                );
                assert_vec_close(
                    &format!("{variant}.{p}.scale_arr"),
                    &col(&|x| x.scale),
                    &values_f64(&get(&s, &format!("{variant}.{p}.scale_arr"))),
                    1.2e-7,
                );
                assert_vec_close(
                    &format!("{variant}.{p}.scale_arr_prev"),
                    &col(&|x| x.scale_prev),
                    &values_f64(&get(&s, &format!("{variant}.{p}.scale_arr_prev_f32"))),
                    1.2e-7,
                );
            }
        }
    }
}

#[test]
fn fp16_checkpoint_buffers_give_the_fp16_schedule() {
    let s = tensors("schedule.safetensors");
    let ac: Vec<f32> = values_f64(&get(&s, "i2v.fp16ckpt.alphas_cumprod"))
        .iter()
        .map(|&v| v as f32)
        .collect();
    let arr: Vec<f32> = values_f64(&get(&s, "i2v.fp16ckpt.scale_arr"))
        .iter()
        .map(|&v| v as f32)
        .collect();
    let sched = NoiseSchedule::from_buffers(ac, Some(arr));
    let mut st = DdimSchedule::new(&sched, 50, 1.0).steps;
    st.reverse();
    let sig: Vec<f64> = st.iter().map(|x| x.sigma as f64).collect();
    assert_vec_close(
        "fp16 sigmas",
        &sig,
        &values_f64(&get(&s, "i2v.fp16ckpt.ddim50.sigmas_eta1_f32")),
        2e-7,
    );
    let prev: Vec<f64> = st.iter().map(|x| x.scale_prev as f64).collect();
    assert_vec_close(
        "fp16 scale_prev",
        &prev,
        &values_f64(&get(&s, "i2v.fp16ckpt.ddim50.scale_arr_prev_f32")),
        1.2e-7,
    );
}

#[test]
fn steps_not_dividing_1000_follow_the_original() {
    let sched = NoiseSchedule::from_config(&ModelConfig::vc2().diffusion);
    assert_eq!(DdimSchedule::new(&sched, 30, 1.0).steps.len(), 31);
    assert_eq!(DdimSchedule::new(&sched, 60, 1.0).steps.len(), 63);
    // The original crashes for S = 3 (timestep 1000); we drop that step.
    let three = DdimSchedule::new(&sched, 3, 1.0);
    assert_eq!(
        three.steps.iter().map(|s| s.timestep).collect::<Vec<_>>(),
        vec![667, 334, 1]
    );
    for s in 1..=1000 {
        let built = DdimSchedule::new(&sched, s, 0.5);
        assert!(built.steps.iter().all(|x| x.timestep < 1000));
        // The count progress shows before the run is the count the run takes.
        assert_eq!(ddim_step_count(1000, s), built.steps.len(), "S = {s}");
    }
    assert_eq!(ddim_step_count(1000, 6), 7);
    let fifty = DdimSchedule::new(&sched, 50, 1.0);
    assert_eq!(fifty.steps.len(), 50);
    assert_eq!(fifty.steps[0].timestep, 981);
    assert_eq!(fifty.steps[49].timestep, 1);
}
