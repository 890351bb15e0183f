//! A GPU-free stand-in for an inference engine such as vLLM, built on the
//! SDK: OpenAI-compatible HTTP (streaming and not), realistic timing (model
//! load, prefill, paced tokens, bounded concurrency with a queue), worker
//! processes, KV transfers, and the shutdown semantics quiesce expects.
//!
//! Its output is deterministic and self-checking: token `i` of a request is
//! [`tokens::expected_token`]`(prompt, i)`, so a client can verify every
//! byte ([`verify`]). The `quiesce-engine` binary runs it;
//! `docs/engine.md` describes its flags, API and exit codes.
//!
//! | module | what |
//! | --- | --- |
//! | [`tokens`] | the token function (pure) |
//! | [`openai`] | request parsing, error bodies, response chunks (pure) |
//! | [`verify`] | client-side checks of responses and streams (pure) |
//! | [`config`] | the engine's settings |
//! | [`server`] | HTTP routes and the paced generation loop |
//! | [`personality`] | the health, metrics and load endpoints of vLLM, SGLang and TensorRT-LLM |
//! | [`workers`] | worker processes: the pool and the worker's own loop |
//! | [`lifecycle`] | start-up, drain, teardown, exit code |

#![warn(missing_docs)]

pub mod config;
pub mod lifecycle;
pub mod openai;
pub mod personality;
pub mod server;
pub mod tokens;
pub mod verify;
pub mod workers;
