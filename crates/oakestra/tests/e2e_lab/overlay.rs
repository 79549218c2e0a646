//! The overlay network's scenarios on the lab (issue 5): service IPs across clusters with
//! round-robin and instance IPs, ping, traffic moving off undeployed and lost instances, port
//! mappings addressed to the node only, closest balancing under delay, a worker's public address
//! changing under its peers, and a clean host after.
//!
//! Workers `e1` and `e2` advertise a delay relay on the lab bridge as their public tunnel address
//! (`--public-addr`): this kernel has no `sch_netem`, so the relay stands in for `tc netem` on
//! the path to each of them.

use super::*;

/// What `GET /hostname` of the overlay server answers: the instance's hostname.
fn hostname(n: u64) -> String {
    format!("instance-{n}")
}

/// `busybox wget` run in the network namespace of instance `n` of `job` on `worker`: what a
/// process of that container sees.
fn fetch_from(t: &Topology, worker: &str, job: &str, n: u64, url: &str) -> Result<String> {
    let pid = task_pid(t, worker, job, n)?;
    // `wget -T` of Debian's busybox 1.35 crashes; `timeout` bounds the request instead.
    let out = Command::new("timeout")
        .args(["5", "nsenter"])
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .args(["busybox", "wget", "-q", "-O", "-", url])
        .output()?;
    ensure!(out.status.success(), "wget {url} from {job}.{n} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Two pings of `size` payload bytes (beyond the overlay MTU they travel in fragments).
fn ping_from(t: &Topology, worker: &str, job: &str, n: u64, ip: &str, size: usize) -> Result<String> {
    let pid = task_pid(t, worker, job, n)?;
    let out = Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .args(["busybox", "ping", "-c", "2", "-W", "3", "-s", &size.to_string(), ip])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(out.status.success(), "ping {ip} from {job}.{n} failed: {text} {}", String::from_utf8_lossy(&out.stderr));
    Ok(text)
}

pub(super) fn task_pid(t: &Topology, worker: &str, job: &str, n: u64) -> Result<u32> {
    let id = format!("{job}.instance.{n}");
    let tasks = t.tasks(&t.worker(worker).ns)?;
    tasks
        .iter()
        .find(|(task, _, status)| *task == id && status == "RUNNING")
        .map(|(_, pid, _)| *pid)
        .with_context(|| format!("no running task {id} on {worker}: {tasks:?}"))
}

pub(super) fn ip_of<'a>(v: &'a Value, key: &str) -> Result<&'a str> {
    v[key].as_str().filter(|s| s.starts_with("10.30.")).with_context(|| format!("no {key} in 10.30.0.0/16: {v}"))
}

/// Answers of `count` fresh requests (each a new connection, so a new flow).
fn answers(t: &Topology, url: &str, count: usize) -> Result<Vec<String>> {
    (0..count).map(|_| fetch_from(t, "w1", &t.overlay.client_job, 0, url)).collect()
}

/// Scenarios 1 and 2: round-robin and instance IPs across clusters, ping, undeploy, worker loss.
pub(super) fn scenario_service_ips(t: &mut Topology) -> Result<()> {
    // The client runs on w1 (west); the servers on e1 and e2 (east), one each: a large memory
    // request makes the cluster spread them.
    let sleeper = t.images.sleeper.clone();
    let (client, client_job) = t.create_service_with(
        "client",
        &sleeper,
        json!([{"type": "direct", "node": "w1", "cluster": "west"}]),
        json!({}),
    )?;
    t.scale_up(&client)?;
    t.wait_running(&client, 0, "the client to be RUNNING on w1")?;
    t.overlay.client = client;
    t.overlay.client_job = client_job;

    let image = t.images.server.clone();
    let (server, server_job) = t.create_service_with(
        "server",
        &image,
        json!([{"type": "direct", "node": "e1;e2", "cluster": "east"}]),
        // No port mapping: two instances end up on one node below, and a host port is one
        // instance's per node (scenario 3 has a service of its own for that).
        json!({"memory": 4000}),
    )?;
    let svc = t.api(Method::GET, &format!("/api/service/{server}"), None)?;
    let rr = ip_of(&svc, "RR_ip").context("an allocated round-robin IP")?.to_string();
    for _ in 0..2 {
        t.scale_up(&server)?;
    }
    let mut placed = BTreeMap::new();
    let mut instance_ips = BTreeMap::new();
    for n in 0..2 {
        let inst = t.wait_instance(
            &server,
            n,
            "a server instance RUNNING with its addresses",
            Duration::from_secs(60),
            |i| Ok(status_of(i) == "RUNNING" && i["namespace_ip"].as_str().is_some_and(|s| !s.is_empty())),
        )?;
        placed.insert(n, t.worker_name_of(&inst));
        instance_ips.insert(n, ip_of(&inst, "instance_ip")?.to_string());
        let ns_ip = inst["namespace_ip"].as_str().unwrap_or("");
        ensure!(ns_ip.starts_with("10.") && !ns_ip.starts_with("10.30."), "namespace_ip {ns_ip}: {inst}");
    }
    ensure!(
        placed.values().collect::<std::collections::BTreeSet<_>>().len() == 2,
        "the two servers should run on e1 and e2: {placed:?}"
    );
    ensure!(instance_ips[&0] != instance_ips[&1] && instance_ips[&0] != rr, "{instance_ips:?}, rr {rr}");
    t.overlay.server = server.clone();
    t.overlay.server_job = server_job.clone();

    // Round robin: both instances answer across repeated requests.
    let rr_url = format!("http://{rr}/hostname");
    let first = wait_until("the round-robin IP to answer from the client", Duration::from_secs(20), POLL, || {
        Ok(fetch_from(t, "w1", &t.overlay.client_job, 0, &rr_url).ok())
    })?;
    ensure!(first.starts_with("instance-"), "{first}");
    let seen = answers(t, &rr_url, 8)?;
    for n in 0..2 {
        ensure!(seen.contains(&hostname(n)), "instance {n} never answered the RR IP: {seen:?}");
    }
    // Each instance IP reaches exactly its instance.
    for (n, ip) in &instance_ips {
        let got = answers(t, &format!("http://{ip}/hostname"), 3)?;
        ensure!(got.iter().all(|h| *h == hostname(*n)), "instance IP {ip} of {n} answered {got:?}");
    }
    // ICMP echo through the overlay, also larger than the MTU (fragmented on the way).
    for size in [56, 4000] {
        let out = ping_from(t, "w1", &t.overlay.client_job, 0, &rr, size)?;
        ensure!(out.contains("2 packets received"), "ping -s {size}: {out}");
    }
    eprintln!("e2e-lab: RR {rr} balanced over {placed:?}; instance IPs {instance_ips:?}");

    // Scenario 2a: undeploy instance 1: within a second every request goes to the survivor.
    t.api(Method::DELETE, &format!("/api/service/{server}/instance/1"), None)?;
    let deleted = Instant::now();
    wait_until(
        "every RR request to reach instance 0 after undeploying 1",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || {
            let got = answers(t, &rr_url, 4);
            Ok(got.ok().filter(|g| g.iter().all(|h| *h == hostname(0))).map(|_| ()))
        },
    )?;
    let moved = deleted.elapsed();
    eprintln!("e2e-lab: traffic left the undeployed instance after {moved:?}");
    ensure!(moved <= Duration::from_millis(1500), "traffic moved only after {moved:?}");
    let released = instance_ips[&1].clone();

    // Scenario 2b: a new instance lands on the worker instance 1 left; kill that worker.
    let n = t.scale_up(&server)?;
    let inst = t.wait_instance(&server, n, "the new server instance RUNNING", Duration::from_secs(60), |i| {
        Ok(status_of(i) == "RUNNING" && i["namespace_ip"].as_str().is_some_and(|s| !s.is_empty()))
    })?;
    let victim = t.worker_name_of(&inst);
    let victim_ip = ip_of(&inst, "instance_ip")?.to_string();
    ensure!(victim_ip == released, "the released instance IP {released} should be reused, got {victim_ip}");
    ensure!(victim != placed[&0], "instance {n} should run beside instance 0, not on {victim}");
    let url = format!("http://{victim_ip}/hostname");
    wait_until("the new instance to answer its instance IP", Duration::from_secs(10), POLL, || {
        Ok(fetch_from(t, "w1", &t.overlay.client_job, 0, &url).ok().filter(|h| *h == hostname(n)))
    })?;
    let killed = Instant::now();
    t.worker_mut(&victim).proc.kill9()?;
    let inst = t.wait_instance(&server, n, "the lost instance to run elsewhere", Duration::from_secs(60), |i| {
        Ok(status_of(i) == "RUNNING" && t.worker_name_of(i) != victim)
    })?;
    ensure!(ip_of(&inst, "instance_ip")? == victim_ip, "the instance IP changed on re-placement: {inst}");
    wait_until("the re-placed instance to answer at its new place", Duration::from_secs(15), POLL, || {
        Ok(fetch_from(t, "w1", &t.overlay.client_job, 0, &url).ok().filter(|h| *h == hostname(n)))
    })?;
    let seen = answers(t, &rr_url, 8)?;
    ensure!(seen.contains(&hostname(n)) && seen.contains(&hostname(0)), "RR after re-placement: {seen:?}");
    eprintln!("e2e-lab: instance {n} re-placed off {victim} and reachable after {:?}", killed.elapsed());
    let log_before = t.worker(&victim).proc.log_text().len();
    t.worker_mut(&victim).proc.start()?;
    wait_until(&format!("the restarted {victim} to connect"), Duration::from_secs(30), POLL, || {
        let log = t.worker(&victim).proc.log_text();
        Ok(log.get(log_before..).unwrap_or("").contains("connected to the broker").then_some(()))
    })?;
    // The root learns that the node is active again from the cluster's next report.
    sleep(Duration::from_secs(5));
    t.wait_for_worker(&victim)?;
    Ok(())
}

/// Scenario 3: the mapping `8080:80` answers at the node's address from outside; traffic to port
/// 8080 elsewhere is left alone.
pub(super) fn scenario_port_mapping(t: &mut Topology) -> Result<()> {
    let image = t.images.server.clone();
    let (mapped, job) = t.create_service_with(
        "mapped",
        &image,
        json!([{"type": "direct", "node": "e1", "cluster": "east"}]),
        json!({"port": "8080:80"}),
    )?;
    let n = t.scale_up(&mapped)?;
    let inst = t.wait_instance(&mapped, n, "the mapped server RUNNING", Duration::from_secs(60), |i| {
        Ok(status_of(i) == "RUNNING")
    })?;
    let worker = t.worker_name_of(&inst);
    let result = port_mapping_answers(t, &worker, &job, n);
    t.delete_service(&mapped)?;
    t.wait_no_containers_of(&job)?;
    result
}

fn port_mapping_answers(t: &Topology, worker: &str, job: &str, n: u64) -> Result<()> {
    let node_ip = t.worker(worker).proc.host.ip();
    let body = wait_until("the port mapping to answer on the node's address", Duration::from_secs(10), POLL, || {
        Ok(oak_e2e::http::get(&format!("{node_ip}:8080"), "/hostname").ok().filter(|r| r.status == 200).map(|r| r.body))
    })?;
    ensure!(body.trim() == hostname(n), "{node_ip}:8080 answered {body:?}");
    // A server on port 8080 of another address (the lab's gateway, i.e. this test) must be
    // reached as itself, from the node and from its containers.
    let www = t.dir.join("gateway-www");
    std::fs::create_dir_all(&www)?;
    std::fs::write(www.join("hostname"), "the gateway\n")?;
    let gateway = t.gateway;
    let mut httpd = Command::new("busybox")
        .args(["httpd", "-f", "-p", &format!("{gateway}:8080"), "-h"])
        .arg(&www)
        .spawn()
        .context("busybox httpd on the gateway")?;
    let result = (|| -> Result<()> {
        let url = format!("http://{gateway}:8080/hostname");
        let from_container =
            wait_until("the gateway's port 8080 from a server container", Duration::from_secs(10), POLL, || {
                Ok(fetch_from(t, worker, job, n, &url).ok())
            })?;
        ensure!(from_container == "the gateway", "a container's request to {url} was rewritten: {from_container:?}");
        let from_node =
            t.worker(worker).proc.host.run_ok("timeout", &["5", "busybox", "wget", "-q", "-O", "-", &url])?;
        ensure!(from_node.trim() == "the gateway", "the node's request to {url} was rewritten: {from_node:?}");
        Ok(())
    })();
    let _ = httpd.kill();
    let _ = httpd.wait();
    result
}

/// Scenario 4: the closest IP answers from the instance with the lower round-trip time.
pub(super) fn scenario_closest(t: &mut Topology) -> Result<()> {
    // Free e1 and e2 of the servers so the two instances below spread over them.
    let (server, server_job) = (t.overlay.server.clone(), t.overlay.server_job.clone());
    t.delete_service(&server)?;
    t.wait_no_containers_of(&server_job)?;
    let image = t.images.server.clone();
    let (near, _job) = t.create_service_with(
        "near",
        &image,
        json!([{"type": "direct", "node": "e1;e2", "cluster": "east"}]),
        json!({"memory": 4000, "addresses": {"closest_ip": "10.30.250.1"}}),
    )?;
    let svc = t.api(Method::GET, &format!("/api/service/{near}"), None)?;
    ensure!(svc["closest_ip"] == "10.30.250.1", "closest_ip not kept: {svc}");
    let mut on = BTreeMap::new();
    for _ in 0..2 {
        let n = t.scale_up(&near)?;
        let inst = t.wait_instance(&near, n, "a closest-service instance RUNNING", Duration::from_secs(60), |i| {
            Ok(status_of(i) == "RUNNING" && i["namespace_ip"].as_str().is_some_and(|s| !s.is_empty()))
        })?;
        on.insert(t.worker_name_of(&inst), n);
    }
    ensure!(on.len() == 2, "the closest service's instances should be on e1 and e2: {on:?}");
    let url = "http://10.30.250.1/hostname";
    for (slow, fast) in [("e1", "e2"), ("e2", "e1")] {
        t.relays[slow].set_delay(Duration::from_millis(40));
        t.relays[fast].set_delay(Duration::ZERO);
        let want = hostname(on[fast]);
        wait_until(
            &format!("the closest IP to answer from {fast} while {slow} is delayed"),
            Duration::from_secs(20),
            Duration::from_millis(500),
            || {
                let got = answers(t, url, 4)?;
                Ok(got.iter().all(|h| *h == want).then_some(()))
            },
        )?;
        // And it stays there.
        let got = answers(t, url, 6)?;
        ensure!(got.iter().all(|h| *h == want), "closest with {slow} delayed answered {got:?}, want {want}");
        eprintln!("e2e-lab: closest answers from {fast} while {slow} is 40 ms away");
    }
    for r in t.relays.values() {
        r.set_delay(Duration::ZERO);
    }
    Ok(())
}

/// Scenario 6: w1's automatic public address changes (a new address takes over the route to the
/// cluster, and the old one takes no tunnel traffic any more): w1 reports it, the root's instance
/// documents show it, and the servers' workers send their answers to the new address.
pub(super) fn scenario_address_change(t: &mut Topology) -> Result<()> {
    let host = t.worker("w1").proc.host.clone();
    let (old, new) = (host.ip(), std::net::Ipv4Addr::new(10, 99, SUBNET, 240));
    let url = "http://10.30.250.1/hostname";
    fetch_from(t, "w1", &t.overlay.client_job, 0, url).context("the closest IP before the change")?;
    let lan = format!("10.99.{SUBNET}.0/24");
    let (old_s, new_s, port) = (old.to_string(), new.to_string(), oak_worker::DEFAULT_TUNNEL_PORT.to_string());
    let block = ["INPUT", "-d", &old_s, "-p", "udp", "--dport", &port, "-j", "DROP"];
    host.run_ok("ip", &["addr", "add", &format!("{new}/24"), "dev", "eth0"])?;
    let changed = Instant::now();
    let result = (|| -> Result<()> {
        host.run_ok("ip", &["route", "replace", &lan, "dev", "eth0", "scope", "link", "src", &new_s])?;
        host.run_ok("iptables", &[&["-w", "-I"][..], &block].concat())?;
        let client = t.overlay.client.clone();
        wait_until("the client instance to show w1's new address", Duration::from_secs(15), POLL, || {
            Ok(t.instance(&client, 0)?.filter(|i| i["host_ip"].as_str() == Some(new_s.as_str())).map(|_| ()))
        })?;
        let reported = changed.elapsed();
        wait_until("the servers to answer w1 at its new address", Duration::from_secs(10), POLL, || {
            Ok(fetch_from(t, "w1", &t.overlay.client_job, 0, url).ok())
        })?;
        answers(t, url, 4).context("repeated requests after the change")?;
        eprintln!(
            "e2e-lab: w1 moved from {old} to {new}: shown at the root after {reported:?}, answered after {:?}",
            changed.elapsed()
        );
        Ok(())
    })();
    // Back to the lab's address (w1 notices on its next check).
    let _ = host.run("iptables", &[&["-w", "-D"][..], &block].concat());
    let _ =
        host.run("ip", &["route", "replace", &lan, "dev", "eth0", "proto", "kernel", "scope", "link", "src", &old_s]);
    let _ = host.run("ip", &["addr", "del", &format!("{new}/24"), "dev", "eth0"]);
    result
}

/// The instance namespaces of the overlay on this machine (of any worker).
pub(super) fn instance_namespaces() -> std::collections::BTreeSet<String> {
    std::fs::read_dir("/run/netns")
        .map(|dir| {
            dir.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("oak-"))
                .collect()
        })
        .unwrap_or_default()
}

/// Scenario 5 (after the teardown): no links, routes, rules, addresses or namespaces of the
/// overlay are left on any host of the lab or on the machine.
pub(super) fn check_no_overlay_leftovers(t: &Topology) -> Result<()> {
    let mut left = Vec::new();
    let mut hosts: Vec<(String, Option<&Host>)> = vec![("the machine".into(), None)];
    hosts.extend(t.workers.iter().map(|w| (w.name.clone(), Some(&w.proc.host))));
    for (name, host) in hosts {
        let run = |program: &str, args: &[&str]| -> String {
            let out = match host {
                Some(h) => h.command(program).args(args).output(),
                None => Command::new(program).args(args).output(),
            };
            out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
        };
        for line in run("ip", &["-o", "link", "show"]).lines() {
            if line.contains(": oak") {
                left.push(format!("{name}: link {line}"));
            }
        }
        for line in run("ip", &["-o", "-4", "addr", "show"]).lines() {
            let worker_range = (18..=30).any(|b| line.contains(&format!(" 10.{b}.")));
            if worker_range {
                left.push(format!("{name}: address {line}"));
            }
        }
        for line in run("ip", &["route", "show"]).lines() {
            if line.contains("oak") || line.starts_with("10.30.") {
                left.push(format!("{name}: route {line}"));
            }
        }
        for table in ["filter", "nat"] {
            for line in run("iptables", &["-w", "-t", table, "-S"]).lines() {
                if line.contains("OAK-") || line.contains("oakbr") || line.contains("oaktun") {
                    left.push(format!("{name}: iptables -t {table}: {line}"));
                }
            }
        }
    }
    for n in instance_namespaces().difference(&t.netns_before) {
        left.push(format!("namespace /run/netns/{n}"));
    }
    ensure!(left.is_empty(), "the overlay left things behind:\n{}", left.join("\n"));
    Ok(())
}
