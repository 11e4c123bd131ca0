//! nginx as it runs: its processes and workers, its configuration (read as
//! data, with the credentials of the process that names it), its error
//! logs and their local time, the backends behind its upstreams, and the
//! connections it kept alive before tracing began. Uses the kernel stage
//! for what only the kernel knows (a process's sockets).
pub mod adopt;
pub mod backends;
pub mod configs;
pub mod confined;
pub mod dns;
pub mod errorlog;
pub mod localtime;
pub mod location_match;
pub mod logfollow;
pub mod nginx_conf;
pub mod nginx_files;
pub mod procs;
