//! The 3D UNet (`lvdm/modules/networks/openaimodel3d.py::UNetModel`). Weight paths are the
//! original ones under `model.diffusion_model.`: `input_blocks.{i}.{j}`, `init_attn.0`,
//! `middle_block.{j}`, `output_blocks.{i}.{j}`, `time_embed`, `fps_embedding`, `out`.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::conv::Conv2d;

use super::config::UNetConfig;
use super::embeddings::EmbeddingMlp;
use super::norm::{group_norm, GroupNorm};
use super::resblock::{conv3x3, Downsample, ResBlock, Upsample};
use super::transformer::{SpatialTransformer, TemporalTransformer, TransformerSpec};

/// One layer of a `TimestepEmbedSequential`.
#[derive(Debug, Clone)]
enum Layer {
    /// The first convolution: f32 in, weights and out (the start of the residual stream).
    InputConv(Conv2d),
    /// Boxed: by far the largest layer.
    Res(Box<ResBlock>),
    Spatial(SpatialTransformer),
    Temporal(TemporalTransformer),
    Down(Downsample),
    Up(Upsample),
}

/// `TimestepEmbedSequential`: routes emb to ResBlocks, context to spatial transformers, and the
/// frame count to temporal layers.
#[derive(Debug, Clone)]
pub struct Block {
    layers: Vec<Layer>,
}

/// Per-call inputs shared by every block.
pub struct BlockInputs<'a> {
    pub emb: &'a Tensor,
    pub context: &'a Tensor,
    pub frames: usize,
}

impl Block {
    pub fn forward(&self, x: &Tensor, inputs: &BlockInputs) -> Result<Tensor> {
        let mut h = x.clone();
        for layer in &self.layers {
            h = match layer {
                Layer::InputConv(conv) => conv.forward_f32(&h)?,
                Layer::Res(res) => res.forward(&h, inputs.emb, inputs.frames)?,
                Layer::Spatial(st) => st.forward(&h, inputs.context)?,
                Layer::Temporal(tt) => tt.forward_frames(&h, inputs.frames)?,
                Layer::Down(down) => down.forward(&h)?,
                Layer::Up(up) => up.forward(&h)?,
            };
        }
        Ok(h)
    }
}

/// Optional observer of top-level block outputs (golden traces, debugging).
pub type TraceFn<'a> = &'a mut dyn FnMut(&str, &Tensor) -> Result<()>;

#[derive(Debug, Clone)]
pub struct UNetModel {
    time_embed: EmbeddingMlp,
    fps_embedding: Option<EmbeddingMlp>,
    input_blocks: Vec<Block>,
    init_attn: Option<TemporalTransformer>,
    middle_block: Block,
    output_blocks: Vec<Block>,
    out_norm: GroupNorm,
    /// `out.2`, computed in f32: the noise prediction leaves the network in f32.
    out_conv: Conv2d,
    /// The weights' dtype, in which the matmuls and convolutions between the first and last
    /// conv run; activations between layers and skips stay in `precision::wide` of it.
    dtype: DType,
    config: UNetConfig,
}

impl UNetModel {
    /// `vb` points at `model.diffusion_model`.
    pub fn new(vb: VarBuilder, cfg: &UNetConfig) -> Result<Self> {
        let mc = cfg.model_channels;
        let emb_dim = cfg.time_embed_dim();
        let spec_for = |ch: usize| TransformerSpec {
            heads: ch / cfg.num_head_channels,
            dim_head: cfg.num_head_channels,
            depth: cfg.transformer_depth,
            use_linear: cfg.use_linear,
        };
        let relative = cfg.use_relative_position.then_some(cfg.temporal_length);
        // [ResBlock, (SpatialTransformer, TemporalTransformer) at attention resolutions].
        let res_and_attention = |vb: VarBuilder, cin: usize, cout: usize, ds: usize| {
            let mut layers = vec![Layer::Res(Box::new(ResBlock::new(
                vb.pp("0"),
                cin,
                cout,
                emb_dim,
                cfg.temporal_conv,
            )?))];
            if cfg.attention_resolutions.contains(&ds) {
                layers.push(Layer::Spatial(SpatialTransformer::new(
                    vb.pp("1"),
                    cout,
                    &spec_for(cout),
                    cfg.context_dim,
                    cfg.use_image_attention,
                )?));
                if cfg.temporal_attention {
                    layers.push(Layer::Temporal(TemporalTransformer::new(
                        vb.pp("2"),
                        cout,
                        &spec_for(cout),
                        relative,
                    )?));
                }
            }
            Ok::<_, candle_core::Error>(layers)
        };

        let vb_in = vb.pp("input_blocks");
        let mut input_blocks = vec![Block {
            layers: vec![Layer::InputConv(
                conv3x3(vb_in.pp("0").pp("0"), cfg.in_channels, mc, 1)?.keep_f32()?,
            )],
        }];
        let init_attn = if cfg.addition_attention {
            // Hard-coded 8 heads of num_head_channels, Conv1d projections.
            let spec = TransformerSpec {
                heads: 8,
                dim_head: cfg.num_head_channels,
                depth: cfg.transformer_depth,
                use_linear: false,
            };
            Some(TemporalTransformer::new(
                vb.pp("init_attn.0"),
                mc,
                &spec,
                relative,
            )?)
        } else {
            None
        };
        let mut skip_channels = vec![mc];
        let mut ch = mc;
        let mut ds = 1;
        for (level, mult) in cfg.channel_mult.iter().enumerate() {
            for _ in 0..cfg.num_res_blocks {
                let vb = vb_in.pp(input_blocks.len().to_string());
                let layers = res_and_attention(vb, ch, mult * mc, ds)?;
                ch = mult * mc;
                input_blocks.push(Block { layers });
                skip_channels.push(ch);
            }
            if level + 1 != cfg.channel_mult.len() {
                let vb = vb_in.pp(input_blocks.len().to_string());
                input_blocks.push(Block {
                    layers: vec![Layer::Down(Downsample::new(vb.pp("0"), ch)?)],
                });
                skip_channels.push(ch);
                ds *= 2;
            }
        }

        let vb_mid = vb.pp("middle_block");
        let mut middle = vec![Layer::Res(Box::new(ResBlock::new(
            vb_mid.pp("0"),
            ch,
            ch,
            emb_dim,
            cfg.temporal_conv,
        )?))];
        middle.push(Layer::Spatial(SpatialTransformer::new(
            vb_mid.pp("1"),
            ch,
            &spec_for(ch),
            cfg.context_dim,
            cfg.use_image_attention,
        )?));
        if cfg.temporal_attention {
            middle.push(Layer::Temporal(TemporalTransformer::new(
                vb_mid.pp("2"),
                ch,
                &spec_for(ch),
                relative,
            )?));
        }
        let last = middle.len();
        middle.push(Layer::Res(Box::new(ResBlock::new(
            vb_mid.pp(last.to_string()),
            ch,
            ch,
            emb_dim,
            cfg.temporal_conv,
        )?)));

        let vb_out = vb.pp("output_blocks");
        let mut output_blocks = Vec::new();
        for (level, mult) in cfg.channel_mult.iter().enumerate().rev() {
            for i in 0..=cfg.num_res_blocks {
                let skip = skip_channels.pop().expect("one skip per input block");
                let vb = vb_out.pp(output_blocks.len().to_string());
                let mut layers = res_and_attention(vb.clone(), ch + skip, mult * mc, ds)?;
                ch = mult * mc;
                if level > 0 && i == cfg.num_res_blocks {
                    let index = layers.len().to_string();
                    layers.push(Layer::Up(Upsample::new(vb.pp(index), ch)?));
                    ds /= 2;
                }
                output_blocks.push(Block { layers });
            }
        }

        let fps_embedding = if cfg.fps_cond {
            Some(EmbeddingMlp::new(vb.pp("fps_embedding"), mc, emb_dim)?)
        } else {
            None
        };
        Ok(Self {
            time_embed: EmbeddingMlp::new(vb.pp("time_embed"), mc, emb_dim)?,
            fps_embedding,
            input_blocks,
            init_attn,
            middle_block: Block { layers: middle },
            output_blocks,
            out_norm: group_norm(vb.pp("out.0"), ch, 1e-5)?,
            out_conv: conv3x3(vb.pp("out.2"), ch, cfg.out_channels, 1)?.keep_f32()?,
            dtype: vb.dtype(),
            config: cfg.clone(),
        })
    }

    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    /// emb = time_embed(sinusoid(t)) [+ fps_embedding(sinusoid(fps))], one row per sample.
    pub fn embed(
        &self,
        timesteps: &[f64],
        fps: &[f64],
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let mc = self.config.model_channels;
        let emb = self.time_embed.embed(timesteps, mc, dtype, device)?;
        match &self.fps_embedding {
            Some(fps_mlp) => emb + fps_mlp.embed(fps, mc, dtype, device)?,
            None => Ok(emb),
        }
    }

    /// Predicts the noise. `x` is `(b, c, t, h, w)` (best f32, whatever the weights), `context`
    /// `(b, L, C)` in the weights' dtype, one timestep and fps per sample. Returns
    /// `(b, c_out, t, h, w)` in f32.
    pub fn forward(
        &self,
        x: &Tensor,
        timesteps: &[f64],
        context: &Tensor,
        fps: &[f64],
    ) -> Result<Tensor> {
        self.forward_traced(x, timesteps, context, fps, None)
    }

    pub fn forward_traced(
        &self,
        x: &Tensor,
        timesteps: &[f64],
        context: &Tensor,
        fps: &[f64],
        mut trace: Option<TraceFn>,
    ) -> Result<Tensor> {
        let (b, c, t, h, w) = x.dims5()?;
        let emb = self.embed(timesteps, fps, self.dtype, x.device())?;
        // repeat_interleave over frames: row = b_idx * t + t_idx.
        let emb = repeat_interleave(&emb, t)?;
        let context = repeat_interleave(context, t)?;
        let inputs = BlockInputs {
            emb: &emb,
            context: &context,
            frames: t,
        };
        let mut record = |name: &str, value: &Tensor| match trace.as_mut() {
            Some(f) => f(name, value),
            None => Ok(()),
        };
        // 'b c t h w -> (b t) c h w'
        let mut hcur = x.transpose(1, 2)?.reshape((b * t, c, h, w))?;
        let mut skips = Vec::with_capacity(self.input_blocks.len());
        for (i, block) in self.input_blocks.iter().enumerate() {
            hcur = block.forward(&hcur, &inputs)?;
            if i == 0 {
                record("input_blocks.0", &hcur)?;
                if let Some(init_attn) = &self.init_attn {
                    hcur = init_attn.forward_frames(&hcur, t)?;
                }
                record("init_attn", &hcur)?;
            } else {
                record(&format!("input_blocks.{i}"), &hcur)?;
            }
            skips.push(hcur.clone());
        }
        hcur = self.middle_block.forward(&hcur, &inputs)?;
        record("middle_block", &hcur)?;
        for (i, block) in self.output_blocks.iter().enumerate() {
            let skip = skips.pop().expect("one skip per output block");
            hcur = block.forward(&Tensor::cat(&[&hcur, &skip], 1)?, &inputs)?;
            record(&format!("output_blocks.{i}"), &hcur)?;
        }
        let y = self
            .out_conv
            .forward_f32(&self.out_norm.forward_silu_as(&hcur, DType::F32)?)?;
        record("out", &y)?;
        let (_, c_out, h_out, w_out) = y.dims4()?;
        y.reshape((b, t, c_out, h_out, w_out))?.transpose(1, 2)
    }
}

/// `x.repeat_interleave(n, dim=0)`.
pub fn repeat_interleave(x: &Tensor, n: usize) -> Result<Tensor> {
    let mut dims = x.dims().to_vec();
    let rows = dims[0];
    let inner = x.unsqueeze(1)?;
    let mut target = inner.dims().to_vec();
    target[1] = n;
    let repeated = inner.broadcast_as(target)?.contiguous()?;
    dims[0] = rows * n;
    repeated.reshape(dims)
}
