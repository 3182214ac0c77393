//! safetensors files: hand-built bytes (header JSON + raw little-endian data) are read exactly;
//! our writer's bytes are what the format says; bad files are clear errors.

use sofa::io::{FileDType, HostTensor, TensorFile};

/// A safetensors file built by hand: `u64` LE header length, the JSON header, the raw data.
fn hand_file(entries: &[(&str, &str, &[usize], Vec<u8>)]) -> Vec<u8> {
    let mut header = String::from("{\"__metadata__\":{\"format\":\"pt\"}");
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in entries {
        let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        let (lo, hi) = (data.len(), data.len() + bytes.len());
        header += &format!(
            ",\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":[{}],\"data_offsets\":[{lo},{hi}]}}",
            dims.join(",")
        );
        data.extend_from_slice(bytes);
    }
    header.push('}');
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header.as_bytes());
    out.extend(data);
    out
}

#[test]
fn reads_every_float_type_from_hand_written_bytes() {
    let bytes = hand_file(&[
        ("a", "F16", &[2], vec![0x00, 0x3E, 0x00, 0xC0]), // 1.5, −2.0
        ("b", "BF16", &[1, 2], vec![0xC0, 0x3F, 0x80, 0xBE]), // 1.5, −0.25
        ("c", "F32", &[1], 0.25f32.to_le_bytes().to_vec()),
        ("d", "F64", &[1, 1, 1, 1], (-3.0f64).to_le_bytes().to_vec()),
    ]);
    let f = TensorFile::from_bytes(&bytes).unwrap();
    let t = |n: &'static str| f.get(n).unwrap().clone();
    assert_eq!(
        t("a"),
        HostTensor {
            dtype: FileDType::F16,
            shape: vec![2],
            data: vec![1.5, -2.0]
        }
    );
    assert_eq!(
        t("b"),
        HostTensor {
            dtype: FileDType::BF16,
            shape: vec![1, 2],
            data: vec![1.5, -0.25]
        }
    );
    assert_eq!(t("c").data, vec![0.25]);
    assert_eq!(t("c").dtype, FileDType::F32);
    assert_eq!(t("d").dims("d").unwrap(), sofa::Dims::new(1, 1, 1, 1));
    assert_eq!(t("d").data, vec![-3.0]);
}

#[test]
fn writer_emits_the_format_and_round_trips() {
    let mut f = TensorFile::default();
    for (name, dtype) in [
        ("h", FileDType::F16),
        ("b", FileDType::BF16),
        ("s", FileDType::F32),
        ("d", FileDType::F64),
    ] {
        let data: Vec<f64> = [0.1, -7.25, 3.0e3, 1.0 / 3.0, 0.0, -1.0]
            .iter()
            .map(|&x| dtype.round(x))
            .collect();
        f.tensors.insert(
            name.into(),
            HostTensor {
                dtype,
                shape: vec![1, 2, 3, 1],
                data,
            },
        );
    }
    let bytes = f.to_bytes().unwrap();
    // The header is JSON after an 8-byte little-endian length; the f32 tensor holds raw LE floats.
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
    assert!(
        header.contains("\"s\":{\"dtype\":\"F32\",\"shape\":[1,2,3,1]"),
        "{header}"
    );
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let s = st.tensor("s").unwrap();
    assert_eq!(&s.data()[4..8], &(-7.25f32).to_le_bytes());
    assert_eq!(st.tensor("h").unwrap().dtype(), safetensors::Dtype::F16);
    let back = TensorFile::from_bytes(&bytes).unwrap();
    assert_eq!(back.tensors, f.tensors);
    let path = std::env::temp_dir().join(format!("sofa-io-{}.safetensors", std::process::id()));
    f.write(&path).unwrap();
    assert_eq!(TensorFile::read(&path).unwrap().tensors, f.tensors);
    std::fs::remove_file(path).unwrap();
}

#[test]
fn bad_files_are_clear_errors() {
    let good = hand_file(&[("q", "F32", &[1], 1.0f32.to_le_bytes().to_vec())]);
    let err = TensorFile::from_bytes(&good[..good.len() - 1])
        .unwrap_err()
        .to_string();
    assert!(err.contains("safetensors"), "{err}");
    let ints = hand_file(&[("q", "I32", &[1], 1i32.to_le_bytes().to_vec())]);
    let err = TensorFile::from_bytes(&ints).unwrap_err();
    assert_eq!(err.argument(), Some("dtype"));
    assert!(err.to_string().contains("`q`"), "{err}");
    let f = TensorFile::from_bytes(&good).unwrap();
    let err = f.get("v").unwrap_err();
    assert_eq!(err.argument(), Some("v"));
    assert!(err.to_string().contains("missing"), "{err}");
    assert_eq!(
        f.get("q").unwrap().dims("q").unwrap_err().argument(),
        Some("q")
    );
    let err = TensorFile::read(std::path::Path::new("/nonexistent/x.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/x.safetensors"), "{err}");
}
