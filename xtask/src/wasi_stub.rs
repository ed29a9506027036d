//! Stubs a component's WASI imports outside the host's subset with traps.
//!
//! componentize-py's CPython links wasi-libc, which imports every WASI
//! interface (files, sockets, terminals, stdin) whether the Python code uses
//! them or not. Geohost refuses a type that imports files or sockets, so
//! those imports are satisfied here, at build time, by a stub component whose
//! every function traps: the type then imports only the subset the host
//! offers (`wit/wasi-subset.txt`), and a type that tried to open a file would
//! trap instead of reaching one.
//!
//! How: decode the component's world, write a world exporting the
//! interfaces to stub (their own dependencies become its imports), build a
//! core module of `unreachable` bodies for it (`wit_component::dummy_module`),
//! make it a component, and plug its exports into the type's imports
//! (`wac_graph::plug`).

use anyhow::{Context, Result, bail};
use std::path::Path;
use wac_graph::{CompositionGraph, EncodeOptions, plug, types::Package};
use wit_component::{ComponentEncoder, StringEncoding, dummy_module, embed_component_metadata};
use wit_parser::decoding::{DecodedWasm, decode};
use wit_parser::{ManglingAndAbi, WorldItem};

/// The WASI interfaces the host implements, without version.
pub fn subset(root: &Path) -> Result<Vec<String>> {
    let path = root.join("wit").join("wasi-subset.txt");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path:?}"))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect())
}

/// `component` with its WASI imports outside `subset` stubbed, and the
/// names of the interfaces it stubbed.
pub fn stub(component: &[u8], subset: &[String]) -> Result<(Vec<u8>, Vec<String>)> {
    let DecodedWasm::Component(mut resolve, world) = decode(component)? else {
        bail!("not a component");
    };
    let stubbed: Vec<String> = resolve.worlds[world]
        .imports
        .iter()
        .filter(|(_, item)| matches!(item, WorldItem::Interface { .. }))
        .map(|(key, _)| resolve.name_world_key(key))
        .filter(|name| {
            let bare = name.split('@').next().unwrap_or(name);
            bare.starts_with("wasi:") && !subset.iter().any(|s| s == bare)
        })
        .collect();
    if stubbed.is_empty() {
        return Ok((component.to_vec(), stubbed));
    }
    let mut wit = String::from("package geohost:wasi-stubs;\nworld stubs {\n");
    for name in &stubbed {
        wit.push_str(&format!("    export {name};\n"));
    }
    wit.push_str("}\n");
    let package = resolve.push_str("wasi-stubs.wit", &wit)?;
    let stubs = resolve.select_world(&[package], Some("stubs"))?;
    let mut module = dummy_module(&resolve, stubs, ManglingAndAbi::Standard32);
    embed_component_metadata(&mut module, &resolve, stubs, StringEncoding::UTF8)?;
    let stub = ComponentEncoder::default()
        .module(&module)?
        .validate(true)
        .encode()?;

    let mut graph = CompositionGraph::new();
    let package = Package::from_bytes("type", None, component.to_vec(), graph.types_mut())?;
    let socket = graph.register_package(package)?;
    let package = Package::from_bytes("wasi-stubs", None, stub, graph.types_mut())?;
    let plugged = graph.register_package(package)?;
    plug(&mut graph, vec![plugged], socket)?;
    let composed = graph.encode(EncodeOptions::default())?;
    Ok((composed, stubbed))
}
