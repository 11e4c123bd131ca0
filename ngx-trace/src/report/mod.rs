//! What ngx-trace tells: the events (JSON Lines and text), their writer,
//! folding and the summary, histograms, recordings, and the Prometheus
//! metrics and their endpoint. Formats what the diagnosis decided; never
//! touches the kernel.
pub mod event;
pub mod fold;
pub mod histogram;
pub mod metrics;
pub mod metrics_file;
pub mod metrics_http;
pub mod output;
pub mod recording;
pub mod reservoir;
pub mod summary;
pub mod writer;
