//! Process CPU time and memory from /proc (Linux).

use serde::Serialize;

/// One reading of a process's counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize)]
pub struct ProcSample {
    /// utime + stime, seconds.
    pub cpu_s: f64,
    /// Resident set size now, KiB.
    pub rss_kb: u64,
    /// Peak resident set size over the process's life (VmHWM), KiB.
    pub hwm_kb: u64,
    /// Time its live threads spent runnable but waiting for a CPU, seconds
    /// (/proc/PID/task/*/schedstat): high when other processes compete.
    pub runq_wait_s: f64,
    /// Busy time (all processes) of the CPUs it may run on, seconds since boot.
    pub cpus_busy_s: f64,
}

/// CPU numbers in a "Cpus_allowed_list" value such as "0-1,3".
pub fn parse_cpu_set(list: &str) -> Vec<usize> {
    let mut v = Vec::new();
    for p in list.trim().split(',').filter(|p| !p.is_empty()) {
        match p.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.trim().parse::<usize>(), b.trim().parse::<usize>()) {
                    v.extend(a..=b.min(a + 4096));
                }
            }
            None => v.extend(p.trim().parse::<usize>().ok()),
        }
    }
    v
}

/// Busy ticks (user+nice+system+irq+softirq+steal) of each CPU from /proc/stat text.
pub fn parse_proc_stat_busy(text: &str) -> Vec<(usize, u64)> {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("cpu")?;
            let (num, fields) = rest.split_once(' ')?;
            let cpu: usize = num.parse().ok()?;
            let f: Vec<u64> = fields
                .split_ascii_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal
            let busy = f
                .iter()
                .take(8)
                .enumerate()
                .filter(|&(i, _)| i != 3 && i != 4)
                .map(|(_, v)| v)
                .sum();
            Some((cpu, busy))
        })
        .collect()
}

fn cpus_busy_s(allowed: &[usize]) -> f64 {
    let Ok(text) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let ticks: u64 = parse_proc_stat_busy(&text)
        .into_iter()
        .filter(|(c, _)| allowed.contains(c))
        .map(|(_, b)| b)
        .sum();
    ticks as f64 / clock_ticks()
}

/// Runqueue wait in ns from the text of a schedstat file ("oncpu wait slices").
pub fn parse_schedstat_wait_ns(text: &str) -> Option<u64> {
    text.split_ascii_whitespace().nth(1)?.parse().ok()
}

fn runq_wait_s(dir: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("{dir}/task")) else {
        return 0.0;
    };
    let ns: u64 = tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|t| parse_schedstat_wait_ns(&t))
        .sum();
    ns as f64 / 1e9
}

pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// utime + stime in clock ticks from the text of /proc/PID/stat. The second
/// field (comm) is in parentheses and may hold spaces, so fields are counted
/// after the last ')'.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_ascii_whitespace();
    // After comm: state(3) ppid(4) … utime(14) stime(15): skip 11 to reach utime.
    let utime: u64 = f.nth(11)?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

/// A "Name:   1234 kB" line's number from the text of /proc/PID/status.
pub fn parse_status_kb(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let v = l.strip_prefix(key)?.strip_prefix(':')?;
        v.split_ascii_whitespace().next()?.parse().ok()
    })
}

/// Count of CPUs in a "Cpus_allowed_list" value such as "0-1,3".
pub fn parse_cpu_list(list: &str) -> usize {
    list.trim()
        .split(',')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('-') {
            Some((a, b)) => match (a.trim().parse::<usize>(), b.trim().parse::<usize>()) {
                (Ok(a), Ok(b)) if b >= a => b - a + 1,
                _ => 0,
            },
            None => usize::from(p.trim().parse::<usize>().is_ok()),
        })
        .sum()
}

/// `pid` None = this process.
pub fn sample(pid: Option<u32>) -> Option<ProcSample> {
    let dir = match pid {
        Some(p) => format!("/proc/{p}"),
        None => "/proc/self".to_string(),
    };
    let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("{dir}/status")).ok()?;
    Some(ProcSample {
        cpu_s: parse_stat_cpu_ticks(&stat)? as f64 / clock_ticks(),
        rss_kb: parse_status_kb(&status, "VmRSS").unwrap_or(0),
        hwm_kb: parse_status_kb(&status, "VmHWM").unwrap_or(0),
        runq_wait_s: runq_wait_s(&dir),
        cpus_busy_s: status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .map_or(0.0, |l| cpus_busy_s(&parse_cpu_set(l))),
    })
}

/// CPUs the process may run on (its affinity mask), if readable.
pub fn allowed_cpus(pid: Option<u32>) -> Option<usize> {
    let dir = match pid {
        Some(p) => format!("/proc/{p}"),
        None => "/proc/self".to_string(),
    };
    let status = std::fs::read_to_string(format!("{dir}/status")).ok()?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?;
    Some(parse_cpu_list(line)).filter(|&n| n > 0)
}

/// Raises this process's soft open-files limit to its hard limit (many
/// sockets). Returns the soft limit in force afterwards.
pub fn raise_nofile_limit() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointer to an rlimit for the duration of the calls.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 0;
        }
        if r.rlim_cur < r.rlim_max {
            let want = libc::rlimit {
                rlim_cur: r.rlim_max,
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                r.rlim_cur = r.rlim_max;
            }
        }
    }
    r.rlim_cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_in_comm() {
        let stat = "4242 (my (odd) host) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                    250 75 0 0 20 0 9 0 12345 1000000 2000 18446744073709551615";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(325));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn status_fields() {
        let status =
            "Name:\thost\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\nCpus_allowed_list:\t0-1\n";
        assert_eq!(parse_status_kb(status, "VmRSS"), Some(10240));
        assert_eq!(parse_status_kb(status, "VmHWM"), Some(20480));
        assert_eq!(parse_status_kb(status, "VmSwap"), None);
    }

    #[test]
    fn cpu_sets_and_proc_stat() {
        assert_eq!(parse_cpu_set("0-2,5\n"), vec![0, 1, 2, 5]);
        assert_eq!(parse_cpu_set(""), Vec::<usize>::new());
        let stat = "cpu  10 0 10 100 5 0 0 0 0 0\ncpu0 4 1 3 50 2 1 1 1 0 0\ncpu1 6 0 7 50 3 0 0 0 0 0\nintr 1 2\n";
        assert_eq!(parse_proc_stat_busy(stat), vec![(0, 11), (1, 13)]);
    }

    #[test]
    fn schedstat() {
        assert_eq!(
            parse_schedstat_wait_ns("3860097920 8944560997 4743\n"),
            Some(8_944_560_997)
        );
        assert_eq!(parse_schedstat_wait_ns("1"), None);
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-1\n"), 2);
        assert_eq!(parse_cpu_list("1"), 1);
        assert_eq!(parse_cpu_list("0-3,6,8-9"), 7);
        assert_eq!(parse_cpu_list(""), 0);
    }

    #[test]
    fn self_sample_reads() {
        let s = sample(None).expect("/proc/self readable on Linux");
        assert!(s.rss_kb > 0);
        assert!(allowed_cpus(None).unwrap_or(1) >= 1);
    }
}
