//! Table-driven tests of SLA validation: each case is a document and either "valid" or the exact
//! set of error fields, each with a fragment of its message.

use oak_api::FieldError;
use serde_json::{json, Value};

use super::*;

const CLIENTSRVR: &str = include_str!("../../../../examples/sla/clientsrvr.json");
const NGINX: &str = include_str!("../../../../examples/sla/nginx.json");
const NGINX_SERVICE: &str = include_str!("../../../../examples/sla/nginx-service.json");

/// Path of the first microservice of the first application; `~.` in expected fields stands for it.
const MS: &str = "applications[0].microservices[0]";

fn example(text: &str) -> Value {
    serde_json::from_str(text).expect("example descriptors are valid JSON")
}

/// A minimal valid microservice.
fn ms() -> Value {
    json!({
        "microservice_name": "web",
        "microservice_namespace": "test",
        "virtualization": "container",
        "code": "docker.io/library/nginx:latest"
    })
}

/// `v` with the fields of `patch` set.
fn with(mut v: Value, patch: Value) -> Value {
    if let (Some(map), Value::Object(patch)) = (v.as_object_mut(), patch) {
        map.extend(patch);
    }
    v
}

/// `v` without the fields `keys`.
fn without(mut v: Value, keys: &[&str]) -> Value {
    if let Some(map) = v.as_object_mut() {
        for key in keys {
            map.remove(*key);
        }
    }
    v
}

fn app(services: Vec<Value>) -> Value {
    json!({"application_name": "app", "application_namespace": "test", "microservices": services})
}

/// The application of an "add services" descriptor.
fn existing_app(services: Vec<Value>) -> Value {
    json!({"applicationID": "66a1b2c3d4e5f60718293a4b", "microservices": services})
}

fn sla(apps: Vec<Value>) -> Value {
    json!({"sla_version": "v2.0", "customerID": "Admin", "applications": apps})
}

/// A descriptor with one application holding one microservice patched with `patch`.
fn svc(patch: Value) -> Value {
    sla(vec![app(vec![with(ms(), patch)])])
}

/// A descriptor whose single microservice has the given constraints.
fn constraints(list: Value) -> Value {
    svc(json!({"constraints": list}))
}

struct Case {
    name: &'static str,
    purpose: Purpose,
    doc: Value,
    /// Empty: valid. Otherwise exactly these `(field, message fragment)` errors, in any order.
    expect: Vec<(&'static str, &'static str)>,
}

fn case(name: &'static str, doc: Value, expect: Vec<(&'static str, &'static str)>) -> Case {
    Case { name, purpose: Purpose::NewApplications, doc, expect }
}

fn services_case(name: &'static str, doc: Value, expect: Vec<(&'static str, &'static str)>) -> Case {
    Case { name, purpose: Purpose::NewServices, doc, expect }
}

fn expand(field: &str) -> String {
    match field.strip_prefix("~.") {
        Some(rest) => format!("{MS}.{rest}"),
        None => field.to_string(),
    }
}

/// Checks that `errors` are exactly the `expect`ed ones, whatever their order.
fn check_errors(name: &str, errors: &[FieldError], expect: &[(&str, &str)]) {
    let listing = errors.iter().map(|e| format!("\n  {e}")).collect::<String>();
    assert_eq!(errors.len(), expect.len(), "{name}: wrong number of errors:{listing}");
    let mut unmatched: Vec<&FieldError> = errors.iter().collect();
    for (field, fragment) in expect {
        let field = expand(field);
        let found = unmatched.iter().position(|e| e.field == field && e.message.contains(fragment));
        match found {
            Some(i) => {
                unmatched.remove(i);
            }
            None => panic!("{name}: no error `{field}` containing {fragment:?}:{listing}"),
        }
    }
}

fn cases() -> Vec<Case> {
    vec![
        // --- example files ---
        case("example clientsrvr", example(CLIENTSRVR), vec![]),
        case("example nginx", example(NGINX), vec![]),
        services_case("example nginx-service as new services", example(NGINX_SERVICE), vec![]),
        case(
            "example nginx-service as new applications",
            example(NGINX_SERVICE),
            vec![
                ("applications[0].application_name", "\"\" must be 1 to 30"),
                ("applications[0].application_namespace", "\"\" must be 1 to 30"),
            ],
        ),
        // --- top level ---
        case("minimal", svc(json!({})), vec![]),
        case("not an object", json!(["v2.0"]), vec![("$", "expected an object, got [\"v2.0\"]")]),
        case(
            "empty object",
            json!({}),
            vec![("sla_version", "is required"), ("customerID", "is required"), ("applications", "is required")],
        ),
        case(
            "sla v1.0 is deprecated",
            with(svc(json!({})), json!({"sla_version": "v1.0"})),
            vec![("sla_version", "\"v1.0\" is deprecated")],
        ),
        case(
            "unknown sla version",
            with(svc(json!({})), json!({"sla_version": "v3"})),
            vec![("sla_version", "\"v3\" is not a supported version")],
        ),
        case(
            "customer id and args types",
            with(svc(json!({})), json!({"customerID": 7, "args": ["a", 1]})),
            vec![("customerID", "expected a string, got 7"), ("args[1]", "expected a string")],
        ),
        case("no applications", sla(vec![]), vec![("applications", "at least one application")]),
        case(
            "applications not an array",
            with(sla(vec![]), json!({"applications": {}})),
            vec![("applications", "expected an array, got {}")],
        ),
        // --- applications ---
        case("application without microservices", sla(vec![app(vec![])]), vec![]),
        case(
            "application not an object",
            sla(vec![json!("app")]),
            vec![("applications[0]", "expected an object, got \"app\"")],
        ),
        case(
            "application required fields",
            sla(vec![json!({})]),
            vec![
                ("applications[0].application_name", "is required"),
                ("applications[0].application_namespace", "is required"),
                ("applications[0].microservices", "is required"),
            ],
        ),
        case(
            "application name pattern",
            sla(vec![with(
                app(vec![]),
                json!({
                    "application_name": "my-app",
                    "application_namespace": "a234567890123456789012345678901"
                }),
            )]),
            vec![
                ("applications[0].application_name", "\"my-app\" must be 1 to 30 ascii letters or digits"),
                ("applications[0].application_namespace", "must be 1 to 30"),
            ],
        ),
        case(
            "application optional field types",
            sla(vec![with(app(vec![]), json!({"applicationID": 5, "application_desc": ["x"]}))]),
            vec![
                ("applications[0].applicationID", "expected a string, got 5"),
                ("applications[0].application_desc", "expected a string"),
            ],
        ),
        case(
            "duplicate application",
            sla(vec![app(vec![]), app(vec![])]),
            vec![("applications[1].application_name", "already defined by applications[0]")],
        ),
        // --- new services ---
        services_case("new services, names absent", sla(vec![existing_app(vec![ms()])]), vec![]),
        services_case(
            "new services, valid names",
            sla(vec![with(existing_app(vec![ms()]), json!({"application_name": "app"}))]),
            vec![],
        ),
        services_case(
            "new services, invalid name",
            sla(vec![with(existing_app(vec![ms()]), json!({"application_namespace": "a b"}))]),
            vec![("applications[0].application_namespace", "\"a b\" must be 1 to 30")],
        ),
        services_case(
            "new services, no application id",
            sla(vec![without(existing_app(vec![ms()]), &["applicationID"])]),
            vec![("applications[0].applicationID", "is required")],
        ),
        services_case(
            "new services, empty application id",
            sla(vec![with(existing_app(vec![ms()]), json!({"applicationID": ""}))]),
            vec![("applications[0].applicationID", "must not be empty")],
        ),
        services_case(
            "new services, no microservice",
            sla(vec![existing_app(vec![])]),
            vec![("applications[0].microservices", "at least one microservice")],
        ),
        services_case(
            "new services, two applications",
            sla(vec![existing_app(vec![ms()]), json!("ignored")]),
            vec![("applications", "exactly one application, got 2")],
        ),
        // --- microservice basics ---
        case(
            "microservice required fields",
            sla(vec![app(vec![json!({})])]),
            vec![
                ("~.microservice_name", "is required"),
                ("~.microservice_namespace", "is required"),
                ("~.virtualization", "is required"),
                ("~.code", "is required"),
            ],
        ),
        case(
            "microservice not an object",
            sla(vec![app(vec![json!(null)])]),
            vec![(MS, "expected an object, got null")],
        ),
        case(
            "microservice name pattern",
            svc(json!({"microservice_name": "web_1", "microservice_namespace": ""})),
            vec![
                ("~.microservice_name", "\"web_1\" must be 1 to 30"),
                ("~.microservice_namespace", "\"\" must be 1 to 30"),
            ],
        ),
        case(
            "microservice id must be empty on create",
            svc(json!({"microserviceID": "abc"})),
            vec![("~.microserviceID", "\"abc\" must be empty when creating a service")],
        ),
        case("empty microservice id", svc(json!({"microserviceID": ""})), vec![]),
        case("code empty", svc(json!({"code": ""})), vec![("~.code", "must not be empty")]),
        case(
            "virtualization empty",
            svc(json!({"virtualization": ""})),
            vec![("~.virtualization", "\"\" is not a virtualization (container, docker, unikernel, crosvm")],
        ),
        case(
            "virtualization with a blank",
            svc(json!({"virtualization": "my runtime"})),
            vec![("~.virtualization", "\"my runtime\" is not a virtualization")],
        ),
        case(
            "virtualization too long",
            svc(json!({"virtualization": "r".repeat(65)})),
            vec![("~.virtualization", "up to 64")],
        ),
        case("virtualization runsc", svc(json!({"virtualization": "runsc"})), vec![]),
        case("virtualization io.containerd.kata.v2", svc(json!({"virtualization": "io.containerd.kata-v2_x"})), vec![]),
        case("virtualization crosvm", svc(json!({"virtualization": "crosvm", "storage": 1024})), vec![]),
        case(
            "integer resources",
            svc(json!({
                "memory": 1.5, "vcpus": -1, "vgpus": "1", "vtpus": 2.0,
                "bandwidth_in": null, "bandwidth_out": 0, "storage": 18446744073709551615u64
            })),
            vec![
                ("~.memory", "1.5 is not an integer >= 0"),
                ("~.vcpus", "-1 is not an integer >= 0"),
                ("~.vgpus", "\"1\" is not an integer >= 0"),
                ("~.vtpus", "2.0 is not an integer >= 0"),
                ("~.bandwidth_in", "null is not an integer >= 0"),
            ],
        ),
        case(
            "string arrays",
            svc(json!({"cmd": ["sh", 1], "args": "x", "added_files": [{}], "platform": 5})),
            vec![
                ("~.cmd[1]", "expected a string, got 1"),
                ("~.args", "expected an array, got \"x\""),
                ("~.added_files[0]", "expected a string, got {}"),
                ("~.platform", "expected a string, got 5"),
            ],
        ),
        case(
            "booleans",
            svc(json!({"one_shot": "yes", "privileged": 1})),
            vec![("~.one_shot", "expected a boolean, got \"yes\""), ("~.privileged", "expected a boolean, got 1")],
        ),
        case(
            "valid optional fields",
            svc(json!({
                "one_shot": true, "privileged": false, "platform": "linux/arm64",
                "cmd": ["sh", "-c", "echo"], "args": [], "added_files": ["http://x/f"],
                "environment": ["A=1", "_B=", "c_2=x=y"], "memory": 100, "state": ""
            })),
            vec![],
        ),
        case(
            "environment entries",
            svc(json!({"environment": ["OK=1", "1A=x", "=x", "NOEQ", "A-B=1"]})),
            vec![
                ("~.environment[1]", "\"1A=x\" is not KEY=VALUE"),
                ("~.environment[2]", "\"=x\" is not KEY=VALUE"),
                ("~.environment[3]", "\"NOEQ\" is not KEY=VALUE"),
                ("~.environment[4]", "\"A-B=1\" is not KEY=VALUE"),
            ],
        ),
        // --- ports ---
        case("port 80", svc(json!({"port": "80"})), vec![]),
        case("port 6080:60/tcp", svc(json!({"port": "6080:60/tcp"})), vec![]),
        case("port 8080:80;5353/udp", svc(json!({"port": "8080:80;5353/udp"})), vec![]),
        case("port empty", svc(json!({"port": ""})), vec![]),
        case(
            "port 80:x",
            svc(json!({"port": "80:x"})),
            vec![("~.port", "port mapping \"80:x\": \"x\" is not a port number")],
        ),
        case("port 70000", svc(json!({"port": "70000"})), vec![("~.port", "out of range 1-65535")]),
        case("port 80/sctp", svc(json!({"port": "80/sctp"})), vec![("~.port", "\"sctp\" is not tcp or udp")]),
        case(
            "port 80;;81",
            svc(json!({"port": "80;;81"})),
            vec![("~.port", "\"80;;81\" has an empty port mapping entry")],
        ),
        case("port as a number", svc(json!({"port": 80})), vec![("~.port", "expected a string, got 80")]),
        // --- architectures and unikernels ---
        case(
            "unikernel without arch",
            svc(json!({"virtualization": "unikernel", "code": "http://k/amd64.tar.gz"})),
            vec![("~.arch", "is required when virtualization is \"unikernel\"")],
        ),
        case(
            "unikernel with empty arch",
            svc(json!({"virtualization": "unikernel", "arch": []})),
            vec![("~.arch", "at least one architecture")],
        ),
        case(
            "unikernel with arch",
            svc(json!({
                "virtualization": "unikernel",
                "code": "http://k/amd64.tar.gz,http://k/arm64.tar.gz",
                "arch": ["amd64", "arm64"]
            })),
            vec![],
        ),
        case(
            "unikernel url count differs from arch",
            svc(json!({"virtualization": "unikernel", "code": "http://k/a.tar.gz", "arch": ["amd64", "arm64"]})),
            vec![("~.code", "lists 1 kernel urls but arch lists 2 architectures")],
        ),
        case(
            "unikernel with an empty url",
            svc(json!({"virtualization": "unikernel", "code": "http://k/a.tar.gz,", "arch": ["amd64", "arm64"]})),
            vec![("~.code", "has an empty kernel url")],
        ),
        case("container with arch", svc(json!({"arch": ["arm", "riscv64"]})), vec![]),
        case(
            "unknown arch",
            svc(json!({"arch": ["amd64", "x86"]})),
            vec![("~.arch[1]", "\"x86\" is not an architecture (amd64, arm64, arm, riscv64)")],
        ),
        // --- addresses ---
        case(
            "valid addresses",
            svc(json!({"addresses": {
                "rr_ip": "10.30.1.1", "closest_ip": "10.30.1.2",
                "rr_ip_v6": "fdff:2000::1", "closest_ip_v6": "fdff:27ff::2",
                "instances": [{"from": 0, "to": 1, "start": "10.30.2.0"}]
            }})),
            vec![],
        ),
        case(
            "service IPs the pool never hands out",
            svc(json!({"addresses": {"rr_ip": "10.30.0.255", "closest_ip": "10.30.254.1"}})),
            vec![
                ("~.addresses.rr_ip", "\"10.30.0.255\" is not a service IP: 10.30.x.y with x and y at most 253"),
                ("~.addresses.closest_ip", "\"10.30.254.1\" is not a service IP"),
            ],
        ),
        case(
            "addresses out of the pools",
            svc(json!({"addresses": {
                "rr_ip": "10.31.0.1", "closest_ip": "ten",
                "rr_ip_v6": "fdff:2800::1", "closest_ip_v6": "10.30.0.1", "instances": "all"
            }})),
            vec![
                ("~.addresses.rr_ip", "\"10.31.0.1\" is not in 10.30.0.0/16"),
                ("~.addresses.closest_ip", "\"ten\" is not an ipv4 address"),
                ("~.addresses.rr_ip_v6", "\"fdff:2800::1\" is not in fdff:2000::/21"),
                ("~.addresses.closest_ip_v6", "is not an ipv6 address"),
                ("~.addresses.instances", "expected an array"),
            ],
        ),
        case(
            "rr_ip equals closest_ip",
            svc(json!({"addresses": {"rr_ip": "10.30.0.9", "closest_ip": "10.30.0.9"}})),
            vec![("~.addresses.closest_ip", "\"10.30.0.9\" is the same address as rr_ip")],
        ),
        case(
            "addresses not an object",
            svc(json!({"addresses": "10.30.0.1"})),
            vec![("~.addresses", "expected an object")],
        ),
        // --- uniqueness across microservices ---
        case(
            "duplicate microservice name",
            sla(vec![app(vec![ms(), with(ms(), json!({"code": "other"}))])]),
            vec![(
                "applications[0].microservices[1].microservice_name",
                "\"web\" in namespace \"test\" is already defined by applications[0].microservices[0]",
            )],
        ),
        case(
            "same name in another namespace",
            sla(vec![app(vec![ms(), with(ms(), json!({"microservice_namespace": "prod"}))])]),
            vec![],
        ),
        case(
            "duplicate rr_ip across applications",
            sla(vec![
                app(vec![with(ms(), json!({"addresses": {"rr_ip": "10.30.0.5"}}))]),
                with(
                    app(vec![with(ms(), json!({"addresses": {"rr_ip": "10.30.0.5"}}))]),
                    json!({"application_name": "other"}),
                ),
            ]),
            vec![(
                "applications[1].microservices[0].addresses.rr_ip",
                "\"10.30.0.5\" is already requested by applications[0].microservices[0]",
            )],
        ),
        // --- constraints ---
        case(
            "valid constraints",
            constraints(json!([
                {"type": "direct", "cluster": "c1"},
                {"type": "direct", "node": "n1;n2", "cluster": ""},
                {"type": "clusters", "allowed": ["c1", "c2"]},
                {"type": "addons", "needs": ["gpu"]},
                {"type": "geo", "location": "48.26,11.67", "threshold": 100, "rigidness": 0.5},
                {"type": "latency", "area": "munich", "threshold": 12.5, "convergence_time": 300},
                {"type": "latency", "location": "-90,180", "threshold": 1}
            ])),
            vec![],
        ),
        case(
            "direct constraint problems",
            constraints(json!([
                {"type": "direct"},
                {"type": "direct", "cluster": "", "node": ""},
                {"type": "direct", "node": "a;;b"},
                {"type": "direct", "node": 3}
            ])),
            vec![
                ("~.constraints[0]", "direct constraint needs a non-empty cluster or node"),
                ("~.constraints[1]", "direct constraint needs a non-empty cluster or node"),
                ("~.constraints[2].node", "\"a;;b\" has an empty host name"),
                ("~.constraints[3].node", "expected a string, got 3"),
            ],
        ),
        case(
            "clusters and addons constraint problems",
            constraints(json!([
                {"type": "clusters"},
                {"type": "clusters", "allowed": []},
                {"type": "clusters", "allowed": ["c1", ""]},
                {"type": "addons", "needs": []},
                {"type": "addons", "needs": [1]}
            ])),
            vec![
                ("~.constraints[0].allowed", "is required"),
                ("~.constraints[1].allowed", "must list at least one cluster"),
                ("~.constraints[2].allowed[1]", "must not be empty"),
                ("~.constraints[3].needs", "must list at least one add-on"),
                ("~.constraints[4].needs[0]", "expected a string, got 1"),
            ],
        ),
        case(
            "geo and latency constraint problems",
            constraints(json!([
                {"type": "geo", "location": "100,0", "threshold": 0},
                {"type": "geo"},
                {"type": "geo", "location": "north", "threshold": "far"},
                {"type": "latency", "threshold": 5},
                {"type": "latency", "area": "x", "threshold": -2, "location": "1,200"}
            ])),
            vec![
                ("~.constraints[0].location", "\"100,0\": latitude 100 is not within [-90, 90]"),
                ("~.constraints[0].threshold", "0 is not greater than 0"),
                ("~.constraints[1].location", "is required"),
                ("~.constraints[1].threshold", "is required"),
                ("~.constraints[2].location", "\"north\" is not a location (lat,long)"),
                ("~.constraints[2].threshold", "expected a number, got \"far\""),
                ("~.constraints[3]", "needs a non-empty area or a location"),
                ("~.constraints[4].threshold", "-2 is not greater than 0"),
                ("~.constraints[4].location", "longitude 200 is not within [-180, 180]"),
            ],
        ),
        case(
            "generic constraint problems",
            constraints(json!([
                {"type": "nearby"},
                {"cluster": "c1"},
                "direct",
                {"type": "direct", "cluster": "c", "rigidness": 1.5, "convergence_time": -1},
                {"type": "direct", "cluster": "c", "rigidness": 0, "convergence_time": 2.5}
            ])),
            vec![
                (
                    "~.constraints[0].type",
                    "\"nearby\" is not a constraint type (direct, clusters, geo, latency, addons)",
                ),
                ("~.constraints[1].type", "is required"),
                ("~.constraints[2]", "expected an object, got \"direct\""),
                ("~.constraints[3].rigidness", "1.5 is not within [0, 1]"),
                ("~.constraints[3].convergence_time", "-1 is not an integer >= 0"),
                ("~.constraints[4].convergence_time", "2.5 is not an integer >= 0"),
            ],
        ),
        case(
            "constraints not an array",
            constraints(json!({"type": "direct"})),
            vec![("~.constraints", "expected an array")],
        ),
        // --- connectivity and volumes ---
        case(
            "valid connectivity and volumes",
            svc(json!({
                "connectivity": [{"target_microservice_id": "db", "con_constraints": [
                    {"type": "latency", "threshold": 10, "rigidness": 1, "convergence_time": 60}
                ]}],
                "volumes": [{"volume_id": "v1", "csi_driver": "csi.example.com", "mount_path": "/data", "config": {}}]
            })),
            vec![],
        ),
        case(
            "connectivity and volume problems",
            svc(json!({
                "connectivity": [{"con_constraints": {}}, 3],
                "volumes": [{"volume_id": 1}, {"volume_id": "v", "csi_driver": "", "config": []}]
            })),
            vec![
                ("~.connectivity[0].target_microservice_id", "is required"),
                ("~.connectivity[0].con_constraints", "expected an array"),
                ("~.connectivity[1]", "expected an object, got 3"),
                ("~.volumes[0].volume_id", "expected a string, got 1"),
                ("~.volumes[0].csi_driver", "is required"),
                ("~.volumes[1].csi_driver", "must not be empty"),
                ("~.volumes[1].config", "expected an object"),
            ],
        ),
        // --- everything at once ---
        case(
            "several errors at once",
            json!({
                "sla_version": "v1.0",
                "applications": [{
                    "application_name": "bad name",
                    "application_namespace": "test",
                    "microservices": [
                        {"microservice_name": "a", "microservice_namespace": "b",
                         "virtualization": "container", "code": "img", "port": "80:x", "memory": -5},
                        {"microservice_name": "c", "microservice_namespace": "d",
                         "virtualization": "unikernel", "code": ""}
                    ]
                }]
            }),
            vec![
                ("sla_version", "deprecated"),
                ("customerID", "is required"),
                ("applications[0].application_name", "\"bad name\""),
                ("~.port", "\"80:x\""),
                ("~.memory", "-5"),
                ("applications[0].microservices[1].code", "must not be empty"),
                ("applications[0].microservices[1].arch", "is required"),
            ],
        ),
    ]
}

#[test]
fn table() {
    let cases = cases();
    assert!(cases.len() >= 30);
    for c in &cases {
        match (validate_sla(&c.doc, c.purpose), c.expect.is_empty()) {
            (Ok(_), true) => {}
            (Ok(_), false) => panic!("{}: accepted, expected {:?}", c.name, c.expect),
            (Err(errors), _) => check_errors(c.name, &errors, &c.expect),
        }
    }
}

#[test]
fn examples_become_typed_values() {
    let sla = validate_sla(&example(CLIENTSRVR), Purpose::NewApplications).expect("valid");
    let app = &sla.applications[0];
    assert_eq!(app.application_name, "clientsrvr");
    assert_eq!(app.microservices.len(), 2);
    let nginx = &app.microservices[1];
    assert_eq!(nginx.port, "80:80/tcp");
    assert_eq!(nginx.addresses.as_ref().and_then(|a| a.rr_ip.as_deref()), Some("10.30.55.55"));
    assert_eq!(nginx.extra.get("state"), Some(&json!("")));

    let sla = validate_sla(&example(NGINX_SERVICE), Purpose::NewServices).expect("valid");
    assert_eq!(sla.applications[0].application_id, "REPLACE-ME");
    assert_eq!(sla.applications[0].application_name, "");
}

#[test]
fn unknown_fields_are_kept() {
    let doc = json!({
        "sla_version": "v2.0", "customerID": "Admin", "top": 1,
        "applications": [{
            "application_name": "app", "application_namespace": "test", "app_extra": [true],
            "microservices": [with(ms(), json!({
                "ms_extra": {"k": "v"},
                "args": ["x"],
                "addresses": {"rr_ip": "10.30.0.1", "addr_extra": "a"},
                "constraints": [{"type": "direct", "cluster": "c", "con_extra": 2}],
                "volumes": [{"volume_id": "v", "csi_driver": "d"}]
            }))]
        }]
    });
    let sla = validate_sla(&doc, Purpose::NewApplications).expect("valid");
    assert_eq!(sla.extra.get("top"), Some(&json!(1)));
    let app = &sla.applications[0];
    assert_eq!(app.extra.get("app_extra"), Some(&json!([true])));
    let ms = &app.microservices[0];
    assert_eq!(ms.extra.get("ms_extra"), Some(&json!({"k": "v"})));
    assert_eq!(ms.extra.get("args"), Some(&json!(["x"])));
    assert_eq!(ms.extra.get("volumes"), Some(&json!([{"volume_id": "v", "csi_driver": "d"}])));
    let addresses = ms.addresses.as_ref().expect("addresses");
    assert_eq!(addresses.extra.get("addr_extra"), Some(&json!("a")));
    assert_eq!(ms.constraints[0].extra.get("con_extra"), Some(&json!(2)));
}

/// What the worker's parser used to refuse on every deploy is refused when stored.
#[test]
fn ports_the_worker_refuses_are_refused_here() {
    for (port, why) in [
        ("0", "port 0 cannot be mapped"),
        ("80;80", "host port 80/tcp is mapped twice"),
        ("50103/udp", "host port 50103/udp is the overlay tunnel's"),
    ] {
        let doc = sla(vec![app(vec![with(ms(), json!({"port": port}))])]);
        let errors = validate_sla(&doc, Purpose::NewApplications).expect_err(port);
        check_errors(port, &errors, &[("~.port", why)]);
    }
}

#[test]
fn names() {
    assert_eq!(job_name("app", "ns", "web", "prod"), "app.ns.web.prod");
    assert_eq!(stored_virtualization("container"), "docker");
    assert_eq!(stored_virtualization("unikernel"), "unikernel");
    assert_eq!(stored_virtualization("runsc"), "runsc");
}

#[test]
fn service_update_bare_microservice() {
    let update =
        validate_service_update(&with(ms(), json!({"microserviceID": "66a1b2c3", "memory": 5}))).expect("valid");
    assert_eq!(update.microservice_id, "66a1b2c3");
    assert_eq!(update.memory, 5);

    let errors = validate_service_update(&without(ms(), &["code"])).expect_err("invalid");
    check_errors("bare update", &errors, &[("code", "is required")]);

    let errors = validate_service_update(&json!("web")).expect_err("invalid");
    check_errors("bare update not an object", &errors, &[("$", "expected an object")]);
}

#[test]
fn service_update_whole_sla() {
    let doc = sla(vec![existing_app(vec![with(ms(), json!({"microserviceID": "abc"}))])]);
    let update = validate_service_update(&doc).expect("valid");
    assert_eq!(update.microservice_id, "abc");
    assert_eq!(update.microservice_name, "web");

    let doc = sla(vec![app(vec![with(ms(), json!({"port": "x"}))])]);
    let errors = validate_service_update(&doc).expect_err("invalid");
    check_errors("update port", &errors, &[("~.port", "\"x\" is not a port number")]);

    let doc = sla(vec![app(vec![ms(), ms()])]);
    let errors = validate_service_update(&doc).expect_err("invalid");
    check_errors("update two", &errors, &[("applications[0].microservices", "exactly one microservice, got 2")]);

    let doc = sla(vec![app(vec![ms()]), app(vec![ms()])]);
    let errors = validate_service_update(&doc).expect_err("invalid");
    check_errors("update two apps", &errors, &[("applications", "exactly one application, got 2")]);

    let doc = with(sla(vec![app(vec![ms()])]), json!({"sla_version": "v1.0"}));
    let errors = validate_service_update(&doc).expect_err("invalid");
    check_errors("update v1", &errors, &[("sla_version", "deprecated")]);
}

#[test]
fn application_update() {
    let doc = json!({"application_name": "app", "application_namespace": "test", "microservices": []});
    assert_eq!(validate_application_update(&doc), Ok(("app".into(), "test".into(), None)));

    let doc = json!({"application_name": "app", "application_namespace": "test", "application_desc": "d"});
    assert_eq!(validate_application_update(&doc), Ok(("app".into(), "test".into(), Some("d".into()))));

    let doc = json!({"application_name": "my app", "application_desc": 1});
    let errors = validate_application_update(&doc).expect_err("invalid");
    check_errors(
        "application update",
        &errors,
        &[
            ("application_name", "\"my app\" must be 1 to 30"),
            ("application_namespace", "is required"),
            ("application_desc", "expected a string, got 1"),
        ],
    );

    let errors = validate_application_update(&json!(null)).expect_err("invalid");
    check_errors("application update null", &errors, &[("$", "expected an object, got null")]);
}

/// Values that break type expectations of every kind.
fn odd_values() -> Vec<Value> {
    vec![
        json!(null),
        json!(-1),
        json!(1.5),
        json!(""),
        json!("x;;"),
        json!([]),
        json!([null, 1]),
        json!({}),
        json!({"type": 1}),
        json!(true),
    ]
}

/// Every variant of `v` with exactly one field or element, at any depth, replaced by `odd`.
fn mutations(v: &Value, odd: &Value, out: &mut Vec<Value>) {
    match v {
        Value::Object(map) => {
            for key in map.keys() {
                let rebuild = |child: Value| {
                    let mut copy = map.clone();
                    copy.insert(key.clone(), child);
                    Value::Object(copy)
                };
                out.push(rebuild(odd.clone()));
                let mut inner = Vec::new();
                mutations(&map[key], odd, &mut inner);
                for child in inner {
                    out.push(rebuild(child));
                }
            }
        }
        Value::Array(items) => {
            for i in 0..items.len() {
                let rebuild = |child: Value| {
                    let mut copy = items.clone();
                    copy[i] = child;
                    Value::Array(copy)
                };
                out.push(rebuild(odd.clone()));
                let mut inner = Vec::new();
                mutations(&items[i], odd, &mut inner);
                for child in inner {
                    out.push(rebuild(child));
                }
            }
        }
        _ => {}
    }
}

/// Errors must be lowercase, without a trailing period, and never a decoding failure (which
/// would mean validation let through something the types cannot hold).
fn check_message_style(errors: &[FieldError]) {
    for e in errors {
        assert!(!e.field.is_empty(), "empty field: {e}");
        assert!(!e.message.ends_with('.'), "trailing period: {e}");
        assert!(!e.message.starts_with(|c: char| c.is_uppercase()), "capitalized: {e}");
        assert!(!e.message.contains("cannot be decoded"), "decoding failed: {e}");
    }
}

#[test]
fn mutated_documents_never_panic_nor_fail_decoding() {
    let base = sla(vec![app(vec![with(
        ms(),
        json!({
            "microserviceID": "", "memory": 1, "cmd": ["a"], "environment": ["A=1"], "port": "80",
            "one_shot": false, "arch": ["amd64"], "platform": "p",
            "addresses": {"rr_ip": "10.30.0.1", "rr_ip_v6": "fdff:2000::1", "instances": []},
            "constraints": [
                {"type": "direct", "node": "n", "cluster": "c"},
                {"type": "clusters", "allowed": ["c"]},
                {"type": "addons", "needs": ["g"]},
                {"type": "geo", "location": "1,2", "threshold": 1, "rigidness": 0, "convergence_time": 1},
                {"type": "latency", "area": "a", "location": "1,2", "threshold": 1}
            ],
            "connectivity": [{"target_microservice_id": "x", "con_constraints": [{}]}],
            "volumes": [{"volume_id": "v", "csi_driver": "d"}]
        }),
    )])]);
    assert!(validate_sla(&base, Purpose::NewApplications).is_ok());
    let mut checked = 0;
    for odd in odd_values() {
        let mut variants = Vec::new();
        mutations(&base, &odd, &mut variants);
        for doc in variants {
            for purpose in [Purpose::NewApplications, Purpose::NewServices] {
                if let Err(errors) = validate_sla(&doc, purpose) {
                    check_message_style(&errors);
                }
            }
            if let Err(errors) = validate_service_update(&doc) {
                check_message_style(&errors);
            }
            let ms = &doc["applications"][0]["microservices"][0];
            if let Err(errors) = validate_service_update(ms) {
                check_message_style(&errors);
            }
            if let Err(errors) = validate_application_update(&doc["applications"][0]) {
                check_message_style(&errors);
            }
            checked += 1;
        }
    }
    assert!(checked > 500, "only {checked} variants");
}
