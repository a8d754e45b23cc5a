//! The full DDIM loop plus VAE decode of every variant against the original's
//! `batch_ddim_sampling` (5 steps; eta 0, eta 1 with the recorded noise replayed, and eta 1
//! with CFG 12). Tolerances (f32): per-step latents and the final latent within
//! max(2e-3, 5e-5·absmax) absolute; the decoded video within 1e-3 max abs error.

use super::support::golden::*;
use candle_core::Tensor;
use floor33::models::unet::UNetModel;
use floor33::models::vae::AutoencoderKL;
use floor33::sampler::ddim::{sample, Conditioning, Flow};
use floor33::sampler::noise::ReplayNoise;
use floor33::sampler::schedule::{DdimSchedule, NoiseSchedule};

const VIDEO_TOL: f64 = 1e-3;

fn latent_tol(want: &Tensor) -> f64 {
    let absmax = values_f64(want).iter().fold(0f64, |m, v| m.max(v.abs()));
    (5e-5 * absmax).max(2e-3)
}

fn check_variant(variant: &str) {
    let cfg = config(variant);
    let vb = weights(variant);
    let unet = UNetModel::new(vb.pp("model.diffusion_model"), &cfg.unet).unwrap();
    let vae = AutoencoderKL::new(vb.pp("first_stage_model"), &cfg.vae).unwrap();
    let io = tensors(&format!("ddim_{variant}.safetensors"));
    let schedule = NoiseSchedule::from_config(&cfg.diffusion);
    let context = get(&io, "context");
    let fps = values_f64(&get(&io, "fps"))[0];
    for (case, eta, guidance) in [("eta0", 0.0, 1.0), ("eta1", 1.0, 1.0), ("cfg", 1.0, 12.0)] {
        let key = |name: &str| format!("{case}.{name}");
        let ddim = DdimSchedule::new(&schedule, 5, eta);
        let timesteps: Vec<f64> = ddim.steps.iter().map(|s| s.timestep as f64).collect();
        assert_eq!(
            timesteps,
            values_f64(&get(&io, &key("timesteps"))),
            "{variant} {case}"
        );
        let x_t = get(&io, &key("x_T"));
        let draws: Vec<Tensor> = match io.get(&key("noise")) {
            Some(noise) => (0..5).map(|i| noise.get(i).unwrap()).collect(),
            None => (0..5).map(|_| x_t.zeros_like().unwrap()).collect(),
        };
        let uc = io.get(&key("uc_context")).cloned();
        let cond = Conditioning {
            context: &context,
            uncond_context: uc.as_ref(),
            guidance_scale: guidance,
            fps,
        };
        let want_x = get(&io, &key("x_t"));
        let want_x0 = get(&io, &key("pred_x0"));
        let mut noise = ReplayNoise::new(draws);
        let mut failures = Vec::new();
        let latent = sample(&unet, &ddim, x_t, &cond, &mut noise, &mut |r| {
            if r.index + 1 < r.total {
                let want = want_x.get(r.index + 1).unwrap();
                let err = max_abs_diff(r.x_prev, &want);
                if err > latent_tol(&want) {
                    failures.push(format!("step {} x_t err {err:.3e}", r.index));
                }
            }
            let want = want_x0.get(r.index).unwrap();
            let err = max_abs_diff(r.pred_x0, &want);
            if err > latent_tol(&want) {
                failures.push(format!("step {} pred_x0 err {err:.3e}", r.index));
            }
            Flow::Continue
        })
        .unwrap()
        .expect("not cancelled");
        assert!(failures.is_empty(), "{variant} {case}: {failures:?}");
        let want_latent = get(&io, &key("latent"));
        assert_close_abs(
            &format!("{variant} {case} latent"),
            &latent,
            &want_latent,
            latent_tol(&want_latent),
        );
        let video = vae.decode_video(&latent).unwrap();
        assert_close_abs(
            &format!("{variant} {case} video"),
            &video,
            &get(&io, &key("video")),
            VIDEO_TOL,
        );
    }
}

#[test]
fn ddim_vc1_512_matches_original() {
    check_variant("vc1_512");
}

#[test]
fn ddim_vc1_1024_matches_original() {
    check_variant("vc1_1024");
}

#[test]
fn ddim_vc2_matches_original() {
    check_variant("vc2");
}

#[test]
fn ddim_i2v_matches_original() {
    check_variant("i2v");
}
