//! Every embedded kernel source compiles with NVRTC (no GPU needed). Skips with a SKIP line when
//! libnvrtc cannot be loaded, unless `SOFA_REQUIRE_NVRTC=1` (set by CI), which makes that a failure.

use sofa::runtime::{embedded, nvrtc};
use std::io::Write;

#[test]
fn every_embedded_source_compiles_with_nvrtc() {
    if !nvrtc::available() {
        if std::env::var("SOFA_REQUIRE_NVRTC").is_ok_and(|v| v == "1") {
            panic!("SOFA_REQUIRE_NVRTC=1 but libnvrtc was not found (LD_LIBRARY_PATH)");
        }
        let _ = writeln!(std::io::stderr(), "SKIP nvrtc: libnvrtc not found");
        return;
    }
    assert!(!embedded::FAMILIES.is_empty());
    for family in embedded::FAMILIES {
        // The targets the runtime's NVRTC path compiles for on an A100 and an H100
        // (`compute_{major}{minor}`); nvcc covers the fatbin's compute_90a at build time.
        for arch in ["compute_80", "compute_90"] {
            let ptx = nvrtc::compile(family, arch).unwrap_or_else(|e| panic!("{e}"));
            let text = ptx.to_src();
            assert!(
                text.contains(".entry"),
                "{}: no kernel entry in the PTX for {arch}",
                family.name
            );
            println!("{} ({arch}): {} bytes of PTX", family.name, text.len());
        }
    }
}

#[test]
fn fatbins_are_embedded_when_built_with_nvcc() {
    for family in embedded::FAMILIES {
        assert!(
            family.source.contains("extern \"C\""),
            "{}: empty amalgamated source",
            family.name
        );
        assert!(
            !family.source.contains("#include \""),
            "{}: a local include was not inlined",
            family.name
        );
        if let Some(bin) = family.fatbin {
            assert!(!bin.is_empty());
            assert!(
                !family.resources.is_empty(),
                "{}: fatbin without a ptxas report",
                family.name
            );
        }
    }
    if std::env::var("SOFA_REQUIRE_NVCC").is_ok_and(|v| v == "1") {
        assert!(embedded::FAMILIES.iter().all(|f| f.fatbin.is_some()));
    }
}

/// No kernel spills registers to local memory on any architecture it is built for (ptxas's report,
/// embedded with the fatbins): a spill in a streaming kernel is a DRAM-speed detour that only a
/// GPU profile would otherwise show. A kernel that needs one must say why here.
#[test]
fn no_kernel_spills_registers() {
    let spills: Vec<String> = embedded::FAMILIES
        .iter()
        .flat_map(|f| f.resources)
        .filter(|r| r.spill_store_bytes > 0 || r.spill_load_bytes > 0)
        .map(|r| {
            format!(
                "{} ({}): {} bytes stored, {} loaded at {} registers",
                r.kernel, r.arch, r.spill_store_bytes, r.spill_load_bytes, r.registers
            )
        })
        .collect();
    assert!(
        spills.is_empty(),
        "spilling kernels:\n{}",
        spills.join("\n")
    );
    let reports: usize = embedded::FAMILIES.iter().map(|f| f.resources.len()).sum();
    println!("{reports} kernel reports, no spills");
}

/// `built_for` (which `Runtime::function` asks before the driver): every reported kernel is built
/// for its architecture, an unknown name is not, and an architecture without a report defers to
/// the driver.
#[test]
fn built_for_answers_from_the_ptxas_report() {
    for family in embedded::FAMILIES {
        for r in family.resources {
            assert!(embedded::built_for(family.name, r.kernel, r.arch));
        }
        if let Some(r) = family.resources.first() {
            assert!(!embedded::built_for(family.name, "no_such_kernel", r.arch));
        }
        assert!(embedded::built_for(family.name, "no_such_kernel", "sm_999"));
    }
    assert!(embedded::built_for("no_such_family", "any", "sm_90a"));
}
