//! The `sofa` binary without a GPU: `check`, `run --backend cpu` on random inputs and on a
//! safetensors file written byte by byte here, and its error messages and exit codes.

use sofa::io::TensorFile;
use sofa::reference::aft::{self, AftParams, Bias};
use sofa::reference::cosformer::{self, CosformerParams};
use sofa::reference::soft::{self, Landmarks, SoftParams};
use sofa::reference::{rel_frobenius, Qkv};
use sofa::Dims;
use std::path::PathBuf;
use std::process::{Command, Output};

fn sofa(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sofa"))
        .args(args)
        .output()
        .expect("the sofa binary runs")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("sofa-cli-{}-{name}", std::process::id()))
}

/// A safetensors file built by hand from f32 tensors: LE length, JSON header, raw LE bytes.
fn write_f32_file(path: &PathBuf, tensors: &[(&str, &[usize], &[f32])]) {
    let mut header = String::from("{");
    let mut data = Vec::new();
    for (i, (name, shape, vals)) in tensors.iter().enumerate() {
        let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        let lo = data.len();
        vals.iter().for_each(|v| data.extend(v.to_le_bytes()));
        let sep = if i == 0 { "" } else { "," };
        header += &format!(
            "{sep}\"{name}\":{{\"dtype\":\"F32\",\"shape\":[{}],\"data_offsets\":[{lo},{}]}}",
            dims.join(","),
            data.len()
        );
    }
    header.push('}');
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header.as_bytes());
    bytes.extend(data);
    std::fs::write(path, bytes).unwrap();
}

/// Deterministic f32 values in (−1, 1), distinct per tensor.
fn vals(len: usize, salt: u32) -> Vec<f32> {
    (0..len as u32)
        .map(|i| (((i * 7919 + salt * 104_729) % 2001) as f32 - 1000.0) / 1000.0)
        .collect()
}

#[test]
fn check_prints_all_pass() {
    let out = sofa(&["check"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains(" 0 failed") && !stdout.contains("FAIL"),
        "{stdout}"
    );
    for op in [
        "soft",
        "cosformer",
        "aft_full",
        "aft_local",
        "aft_simple",
        "aft_conv",
        "sima",
        "softmax",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(op) && l.ends_with("pass")),
            "no passing {op} row:\n{stdout}"
        );
    }
}

#[test]
fn run_cpu_every_op_on_random_inputs() {
    for (op, extra) in [
        ("soft", &["--m", "5"][..]),
        (
            "soft",
            &["--landmarks", "avgpool2d", "--height", "5", "--pool", "2"][..],
        ),
        (
            "soft",
            &["--landmarks", "given", "--m", "3", "--untied"][..],
        ),
        ("cosformer", &["--causal", "--M", "40"][..]),
        ("cosformer", &["--kv-len", "13"][..]),
        ("aft_full", &["--causal"][..]),
        ("aft_local", &["--window", "3"][..]),
        ("aft_simple", &[][..]),
        ("aft_conv", &["--window", "2", "--causal"][..]),
        ("sima", &["--dv", "5"][..]),
        ("softmax", &["--causal"][..]),
    ] {
        let mut args = vec![
            "run",
            "--backend",
            "cpu",
            "--op",
            op,
            "--shape",
            "2,2,30,6",
            "--dtype",
            "f32",
        ];
        args.extend(extra);
        let out = sofa(&args);
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(0), "{args:?}\n{stdout}{stderr}");
        assert!(
            stdout.contains("linear vs literal") && stdout.contains("PASS"),
            "{args:?}\n{stdout}"
        );
    }
}

#[test]
fn run_round_trips_a_hand_written_file() {
    let (b, h, n, d) = (1, 2, 7, 3);
    let len = b * h * n * d;
    let (q, k, v) = (vals(len, 1), vals(len, 2), vals(len, 3));
    let shape = [b, h, n, d];
    let w = vals(n * 3, 4); // AFT-local band, window 2
    let input = tmp("in.safetensors");
    write_f32_file(
        &input,
        &[
            ("q", &shape, &q),
            ("k", &shape, &k),
            ("v", &shape, &v),
            ("w", &[n, 3], &w),
        ],
    );
    let f64s = |x: &[f32]| x.iter().map(|&a| a as f64).collect::<Vec<f64>>();
    let (qd, kd, vd, wd) = (f64s(&q), f64s(&k), f64s(&v), f64s(&w));
    let x = Qkv::self_attn(&qd, &kd, &vd, Dims::new(b, h, n, d), d).unwrap();
    let cases: [(&str, &[&str], Vec<f64>); 3] = [
        (
            "cosformer",
            &["--causal"],
            cosformer::literal(
                &x,
                &CosformerParams {
                    causal: true,
                    ..Default::default()
                },
            )
            .unwrap(),
        ),
        (
            "aft_local",
            &[],
            aft::literal(
                &x,
                &Bias::Local { w: &wd, window: 2 },
                &AftParams::default(),
            )
            .unwrap(),
        ),
        (
            "soft",
            &["--m", "2", "--newton-iters", "7"],
            soft::literal(
                &x,
                None,
                &SoftParams {
                    landmarks: Landmarks::AvgPool1d { m: 2 },
                    newton_iters: 7,
                    ..Default::default()
                },
            )
            .unwrap(),
        ),
    ];
    for (op, extra, want) in cases {
        let output = tmp(&format!("{op}-out.safetensors"));
        let mut args = vec![
            "run",
            "--backend",
            "cpu",
            "--op",
            op,
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
        ];
        args.extend(extra);
        let out = sofa(&args);
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
        let bytes = std::fs::read(&output).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let o = st.tensor("o").unwrap();
        assert_eq!(
            (o.dtype(), o.shape()),
            (safetensors::Dtype::F32, &shape[..]),
            "{op}: o keeps the input dtype and shape"
        );
        let got: Vec<f64> = o
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect();
        let err = rel_frobenius(&got, &want);
        assert!(
            err < 1e-6,
            "{op}: rel. error {err:.3e} vs the reference on the file's values"
        );
        std::fs::remove_file(output).unwrap();
    }
    std::fs::remove_file(input).unwrap();
}

#[test]
fn run_keeps_a_half_precision_dtype() {
    let input = tmp("half.safetensors");
    let mut f = TensorFile::default();
    for (i, name) in ["q", "k", "v"].into_iter().enumerate() {
        let data: Vec<f64> = vals(2 * 5 * 4, i as u32)
            .iter()
            .map(|&x| half::bf16::from_f32(x).to_f64())
            .collect();
        f.tensors.insert(
            name.into(),
            sofa::io::HostTensor {
                dtype: sofa::io::FileDType::BF16,
                shape: vec![1, 2, 5, 4],
                data,
            },
        );
    }
    f.write(&input).unwrap();
    let output = tmp("half-out.safetensors");
    let out = sofa(&[
        "run",
        "--backend",
        "cpu",
        "--op",
        "sima",
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let o = TensorFile::read(&output).unwrap();
    assert_eq!(o.get("o").unwrap().dtype, sofa::io::FileDType::BF16);
    std::fs::remove_file(input).unwrap();
    std::fs::remove_file(output).unwrap();
}

#[test]
fn missing_or_misshapen_tensors_are_named() {
    let shape = [1, 1, 4, 2];
    let x = vals(8, 5);
    let path = tmp("bad.safetensors");
    write_f32_file(&path, &[("q", &shape, &x), ("k", &shape, &x)]);
    let p = path.to_str().unwrap();
    let out = sofa(&["run", "--backend", "cpu", "--op", "cosformer", "--input", p]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("`v`") && stderr.contains("missing"),
        "{stderr}"
    );

    write_f32_file(
        &path,
        &[("q", &shape, &x), ("k", &[1, 1, 8], &x), ("v", &shape, &x)],
    );
    let (_, stderr) = text(&sofa(&[
        "run",
        "--backend",
        "cpu",
        "--op",
        "sima",
        "--input",
        p,
    ]));
    assert!(stderr.contains("`k`"), "{stderr}");

    write_f32_file(
        &path,
        &[
            ("q", &shape, &x),
            ("k", &shape, &x),
            ("v", &shape, &x),
            ("w", &[4, 2], &x),
        ],
    );
    let (_, stderr) = text(&sofa(&[
        "run",
        "--backend",
        "cpu",
        "--op",
        "aft_local",
        "--input",
        p,
    ]));
    assert!(stderr.contains("`w`") && stderr.contains("odd"), "{stderr}");
    let (_, stderr) = text(&sofa(&[
        "run",
        "--backend",
        "cpu",
        "--op",
        "aft_full",
        "--input",
        p,
    ]));
    assert!(
        stderr.contains("`w`") && stderr.contains("[4, 4]"),
        "{stderr}"
    );
    std::fs::remove_file(path).unwrap();
}

#[test]
fn backends_and_bad_flags() {
    let out = sofa(&[
        "run",
        "--backend",
        "gpu",
        "--op",
        "softmax",
        "--shape",
        "1,1,8,4",
    ]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("softmax has no GPU kernel"), "{stderr}");
    // Every other op asks for the device (exit 3 here, where there is none).
    for op in ["soft", "cosformer", "aft_local", "aft_full", "sima"] {
        let out = sofa(&["run", "--backend", "gpu", "--op", op, "--shape", "1,1,8,4"]);
        let (_, stderr) = text(&out);
        if out.status.code() == Some(3) {
            assert!(stderr.contains("no CUDA device"), "{op}: {stderr}");
        }
    }

    let out = sofa(&["run", "--op", "aft_simple", "--shape", "1,1,8,4"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("note:") && stderr.contains("CPU"),
        "{stderr}"
    );

    for (args, arg) in [
        (
            &["--op", "soft", "--shape", "1,1,8,4", "--m", "0"][..],
            "`m`",
        ),
        (
            &["--op", "soft", "--shape", "1,1,8,4", "--newton-iters", "0"][..],
            "`newton_iters`",
        ),
        (
            &[
                "--op",
                "soft",
                "--shape",
                "1,1,10,4",
                "--landmarks",
                "avgpool2d",
                "--height",
                "3",
            ][..],
            "`height`",
        ),
        (
            &["--op", "cosformer", "--shape", "1,1,8,4", "--M", "7"][..],
            "`M`",
        ),
        (
            &[
                "--op",
                "cosformer",
                "--shape",
                "1,1,8,4",
                "--kv-len",
                "9",
                "--causal",
            ][..],
            "`causal`",
        ),
        (
            &["--op", "aft_local", "--shape", "1,1,8,4", "--window", "0"][..],
            "`window`",
        ),
        (&["--op", "sima"][..], "`shape`"),
    ] {
        let mut all = vec!["run", "--backend", "cpu"];
        all.extend(args);
        let out = sofa(&all);
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{all:?}: {stderr}");
        assert!(stderr.contains(arg), "{all:?}: {stderr}");
    }
}

/// Without a CUDA device, the GPU-only commands say so in one line and exit with code 3.
#[test]
fn gpu_commands_without_a_device_exit_3() {
    if sofa::runtime::probe().is_ok() {
        eprintln!("SKIP gpu_commands_without_a_device_exit_3: a CUDA device is present");
        return;
    }
    for args in [&["info"][..], &["bench", "--op", "sima", "--seq", "1k"][..]] {
        let out = sofa(args);
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {stderr}");
        assert!(stderr.contains("no CUDA device"), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
    }
}

#[test]
fn plot_writes_an_svg_from_json_lines() {
    let input = tmp("plot-in.jsonl");
    let svg = tmp("plot-out.svg");
    let line = |n: usize, t: f64| {
        format!("{{\"op\":\"sima\",\"variant\":\"\",\"n\":{n},\"d\":64,\"dtype\":\"f16\",\"tokens_per_s\":{t},\"pct_roofline\":60}}\n")
    };
    std::fs::write(&input, line(4096, 9.7e7) + &line(65536, 2.3e8)).unwrap();
    let out = sofa(&[
        "plot",
        input.to_str().unwrap(),
        "--out",
        svg.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    assert!(std::fs::read_to_string(&svg)
        .unwrap()
        .contains("sima f16 D=64"));
}

#[test]
fn report_judges_targets_and_crossovers_from_several_files() {
    let (ours, torch) = (tmp("targets-ours.jsonl"), tmp("targets-torch.jsonl"));
    let rec = |op: &str, tps: f64| {
        format!("{{\"op\":\"{op}\",\"variant\":\"causal\",\"b\":1,\"h\":16,\"n\":8192,\"s\":8192,\"d\":64,\"dtype\":\"f16\",\"graph\":false,\"median_ms\":0.1,\"tokens_per_s\":{tps},\"gb_per_s\":2000,\"peak_copy_gb_per_s\":2900}}\n")
    };
    std::fs::write(&ours, rec("cosformer", 8e8)).unwrap();
    let sdpa = rec("softmax_sdpa", 4e8).replace("\"median_ms\":0.1", "\"median_ms\":0.2");
    std::fs::write(&torch, rec("cosformer_fla", 2e8) + &sdpa).unwrap();
    let out = sofa(&["report", ours.to_str().unwrap(), torch.to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("| 4.00× cosformer_fla | met |"), "{stdout}");
    assert!(stdout.contains("| 69.0 % of copy rate | met |"), "{stdout}");
    assert!(stdout.contains("2 met, 0 missed, "), "{stdout}");
    assert!(
        stdout.contains("| cosformer | causal | 1,16,64 | f16 | ≤ 8k | — |"),
        "{stdout}"
    );
}

#[test]
fn plot_draws_several_files_together() {
    // sofa's sweep and torch_reference.py's records in one plot (issue 7: side by side).
    let (ours, torch) = (tmp("plot-ours.jsonl"), tmp("plot-torch.jsonl"));
    let svg = tmp("plot-both.svg");
    let line = |op: &str, n: usize, t: f64| {
        format!("{{\"op\":\"{op}\",\"variant\":\"\",\"n\":{n},\"d\":64,\"dtype\":\"f16\",\"tokens_per_s\":{t}}}\n")
    };
    std::fs::write(
        &ours,
        line("sima", 4096, 9.7e7) + &line("sima", 65536, 2.3e8),
    )
    .unwrap();
    // No trailing newline: the files must still not run together.
    let t = line("softmax_sdpa", 4096, 5e7) + line("softmax_sdpa", 65536, 1e7).trim_end();
    std::fs::write(&torch, t).unwrap();
    let out = sofa(&[
        "plot",
        ours.to_str().unwrap(),
        torch.to_str().unwrap(),
        "--out",
        svg.to_str().unwrap(),
    ]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("(4 records)"), "{stdout}");
    let drawn = std::fs::read_to_string(&svg).unwrap();
    assert!(
        drawn.contains("sima f16 D=64") && drawn.contains("softmax_sdpa"),
        "{drawn}"
    );
}
