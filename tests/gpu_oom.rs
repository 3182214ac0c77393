//! Out of device memory (issue 9): an allocation that cannot fit returns
//! `Error::OutOfMemory { bytes }` with the size asked, and the runtime stays usable: a normal
//! SimA call on the same runtime and stream still matches the reference. Skips without a device.

mod common;

use sofa::ops::sima;
use sofa::ops::{TensorMut, TensorRef};
use sofa::reference::{self, gather, Rng};
use sofa::verify::compare;
use sofa::{Dims, Error, Layout};

#[test]
fn oversized_alloc_is_a_typed_error_and_the_runtime_survives() {
    let Some(rt) = common::gpu("out of memory") else {
        return;
    };
    let stream = rt.new_stream().unwrap();
    let total = rt.info().total_memory;
    // More bytes than the device has, then more f32s than it has bytes.
    for (bytes, r) in [
        (2 * total, rt.alloc::<u8>(&stream, 2 * total).map(|_| ())),
        (4 * total, rt.alloc::<f32>(&stream, total).map(|_| ())),
    ] {
        match r {
            Err(Error::OutOfMemory { bytes: b }) => assert_eq!(b, bytes),
            other => panic!("asked for {bytes} bytes of a {total}-byte device: {other:?}"),
        }
    }
    // The context and stream still work: a normal call is correct.
    let dims = Dims::new(2, 3, 1000, 64);
    let l = Layout::contiguous(dims);
    let mut rng = Rng::new(3);
    let (hq, hk, hv) = (
        common::random::<f32>(&mut rng, &l),
        common::random::<f32>(&mut rng, &l),
        common::random::<f32>(&mut rng, &l),
    );
    let q = stream.clone_htod(&hq).unwrap();
    let k = stream.clone_htod(&hk).unwrap();
    let v = stream.clone_htod(&hv).unwrap();
    let mut o = stream.clone_htod(&common::poisoned::<f32>(&l)).unwrap();
    let r = |data| TensorRef { data, layout: l };
    sima::forward(
        &rt,
        &stream,
        r(&q),
        r(&k),
        r(&v),
        TensorMut {
            data: &mut o,
            layout: l,
        },
        None,
    )
    .unwrap();
    let got = gather(&stream.clone_dtoh(&o).unwrap(), &l);
    let want = reference::sima::forward(
        &hq.iter().map(|&x| x as f64).collect::<Vec<_>>(),
        &hk.iter().map(|&x| x as f64).collect::<Vec<_>>(),
        &hv.iter().map(|&x| x as f64).collect::<Vec<_>>(),
        dims,
        64,
    );
    let c = compare::<f32>(&got, &want);
    assert!(c.pass(), "sima after OOM: {c}");
    println!("OOM for {} bytes reported; SimA afterwards: {c}", 2 * total);
}
