//! `cargo run --release --example embed -- DIR [cpu|gpu] TEXT...`: sentence embeddings from a
//! Hugging Face / sentence-transformers folder.
use taskloom::models::hf::{DirFiles, Encoder};
use taskloom::{Device, DeviceChoice};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = args.first().ok_or("usage: embed DIR [auto|cpu|gpu] TEXT...")?;
    let choice: DeviceChoice = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or_default();
    let dev = pollster::block_on(Device::from_choice(choice))?;
    let enc = Encoder::load(&DirFiles(dir.into()), dev)?;
    let texts: Vec<&str> = args[2..].iter().map(|s| s.as_str()).collect();
    let t0 = std::time::Instant::now();
    let e = pollster::block_on(enc.embed(&texts))?;
    eprintln!("{} texts on {} in {:?}", texts.len(), enc.device.info().name, t0.elapsed());
    for v in e {
        println!("{:?}", &v[..8]);
    }
    Ok(())
}
