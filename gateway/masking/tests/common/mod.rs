#![allow(dead_code)]
pub mod gen;
