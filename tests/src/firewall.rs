//! iptables rules on loopback, removed on drop (and swept at creation, in
//! case an earlier run was killed before it could clean up).
use std::process::Command;

/// Comment marking every rule the tests add.
const COMMENT: &str = "ngx-trace-test";

/// An iptables INPUT rule on `lo`.
pub struct LoopbackRule {
    spec: Vec<String>,
}

fn iptables(args: &[String]) -> bool {
    Command::new("iptables")
        .args(["-w", "5"])
        .args(args)
        // Deleting a rule that is not there (the sweep) is expected to fail.
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl LoopbackRule {
    /// Drops SYNs to 127.0.0.1:`port`: connects to it get no answer.
    pub fn drop_syn(port: u16) -> Self {
        Self::insert(&format!("-p tcp --dport {port} --syn -j DROP"))
    }

    /// Rejects SYNs to 127.0.0.1:`port` the way iptables does by default:
    /// with ICMP port unreachable, which `connect()` reports as 111 too.
    pub fn reject_syn(port: u16) -> Self {
        Self::insert(&format!("-p tcp --dport {port} --syn -j REJECT"))
    }

    /// Drops this fraction of the packets sent to 127.0.0.1:`port` (SYNs,
    /// request data, ACKs of the response), at random.
    pub fn lose(port: u16, probability: f64) -> Self {
        Self::insert(&format!(
            "-p tcp --dport {port} -m statistic --mode random --probability {probability} -j DROP"
        ))
    }

    /// Drops this fraction of the packets 127.0.0.1:`port` sends back (its
    /// SYN-ACKs, response data, ACKs of the request), at random.
    pub fn lose_from(port: u16, probability: f64) -> Self {
        Self::insert(&format!(
            "-p tcp --sport {port} -m statistic --mode random --probability {probability} -j DROP"
        ))
    }

    fn insert(rule: &str) -> Self {
        let mut spec: Vec<String> = ["INPUT", "-i", "lo"].map(String::from).to_vec();
        spec.extend(rule.split_whitespace().map(String::from));
        spec.extend(["-m", "comment", "--comment", COMMENT].map(String::from));
        // Sweep a leftover identical rule first.
        while iptables(&[&["-D".to_string()][..], &spec].concat()) {}
        assert!(
            iptables(&[&["-I".to_string()][..], &spec].concat()),
            "failed to add iptables rule {spec:?}: is iptables installed and are we root?"
        );
        Self { spec }
    }
}

impl Drop for LoopbackRule {
    fn drop(&mut self) {
        while iptables(&[&["-D".to_string()][..], &self.spec].concat()) {}
    }
}
