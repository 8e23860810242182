//! CPU time per process from /proc: utime + stime of a process (all its threads), and of a
//! process tree, where children that exited are counted through their parent's cutime + cstime
//! (a reaped child's time is folded into its parent's), so a snapshot before and after a phase
//! gives the tree's whole cost in between even when its members come and go (Postgres backends,
//! Celery's prefork children).

use std::collections::HashMap;

/// One process as /proc/PID/stat shows it, times in clock ticks.
#[derive(Clone, Debug)]
pub struct Proc {
    pub ppid: u32,
    pub comm: String,
    /// utime + stime.
    pub own: u64,
    /// cutime + cstime: children that exited and were reaped.
    pub reaped: u64,
}

/// Every process on the machine.
pub struct Snapshot {
    pub procs: HashMap<u32, Proc>,
    /// Busy ticks of the whole machine (/proc/stat), for the unattributed rest.
    pub machine_busy: u64,
    /// Ticks the machine spent in interrupts and softirqs (loopback TCP is mostly softirq work),
    /// which the kernel charges to no process.
    pub machine_irq: u64,
}

pub fn stat(pid: u32) -> Option<Proc> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm is in parentheses and may hold spaces or parentheses itself.
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_owned();
    let f: Vec<&str> = text[close + 2..].split_whitespace().collect();
    // f[0] is field 3 (state): field n is f[n - 3].
    let n = |i: usize| f.get(i - 3).and_then(|v| v.parse::<u64>().ok());
    Some(Proc {
        ppid: n(4)? as u32,
        comm,
        own: n(14)? + n(15)?,
        reaped: n(16)? + n(17)?,
    })
}

impl Snapshot {
    pub fn take() -> Self {
        let mut procs = HashMap::new();
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for entry in dir.flatten() {
                if let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) {
                    if let Some(p) = stat(pid) {
                        procs.insert(pid, p);
                    }
                }
            }
        }
        let (machine_busy, machine_irq) = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                let line = s.lines().next()?.to_owned();
                let v: Vec<u64> = line
                    .split_whitespace()
                    .skip(1)
                    .filter_map(|x| x.parse().ok())
                    .collect();
                // user nice system idle iowait irq softirq steal: busy = all but idle and iowait.
                let total: u64 = v.iter().take(8).sum();
                Some((total - v.get(3)? - v.get(4)?, v.get(5)? + v.get(6)?))
            })
            .unwrap_or((0, 0));
        Snapshot {
            procs,
            machine_busy,
            machine_irq,
        }
    }

    /// The ticks of `root` and everything below it, exited children included.
    pub fn tree(&self, root: u32) -> u64 {
        let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
        for (pid, p) in &self.procs {
            children.entry(p.ppid).or_default().push(*pid);
        }
        let mut sum = 0;
        let mut stack = vec![root];
        while let Some(pid) = stack.pop() {
            if let Some(p) = self.procs.get(&pid) {
                sum += p.own + p.reaped;
            }
            stack.extend(children.get(&pid).into_iter().flatten());
        }
        sum
    }

    /// The ticks of the processes (kernel threads) whose name starts with one of `prefixes`.
    pub fn named(&self, prefixes: &[&str]) -> HashMap<u32, u64> {
        self.procs
            .iter()
            .filter(|(_, p)| prefixes.iter().any(|x| p.comm.starts_with(x)))
            .map(|(pid, p)| (*pid, p.own))
            .collect()
    }
}

/// The ticks spent between two snapshots by the threads named `prefixes`: those alive at the
/// end, counted from zero when they were born meanwhile (threads that ended in between are lost,
/// so this undercounts a little).
pub fn named_delta(before: &Snapshot, after: &Snapshot, prefixes: &[&str]) -> u64 {
    let b = before.named(prefixes);
    after
        .named(prefixes)
        .iter()
        .map(|(pid, t)| t.saturating_sub(*b.get(pid).unwrap_or(&0)))
        .sum()
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux when it cannot be asked).
pub fn ticks_per_sec() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}
