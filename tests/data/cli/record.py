#!/usr/bin/env python3
"""Records the command line's contract from a binary: for each invocation in CASES, the
exit code, which stream spoke, and the names (options, placeholders, subcommands,
environment variables, the offending arguments) its text gives. tests/cli_contract.rs
checks the binary being built still gives each one.

The contract in contract.json was recorded from the hand-written parser before clap came
back (main c3b4ece):  python3 tests/data/cli/record.py OLD_BINARY > tests/data/cli/contract.json
Re-recording from today's binary would only freeze whatever it does now."""
import json, os, re, subprocess, sys, tempfile

HELP = [[], ["run"], ["token"], ["status"], ["watch"], ["refresh"], ["reload"], ["check"],
        ["key"], ["key", "show"], ["key", "generate"], ["enroll"], ["exec"]]

CASES = []
for path in HELP:
    CASES.append({"args": path + ["--help"]})
    CASES.append({"args": path + ["-h"]})
    CASES.append({"args": ["help"] + path})
    CASES.append({"args": path + ["--version"]})
    CASES.append({"args": path + ["-V"]})
CASES += [{"args": a} for a in [
    ["help"], ["help", "key", "show"], ["key", "help", "show"],
    # what is missing
    [], ["key"], ["--config", "/x.toml"],
    # unknown
    ["frobnicate"], ["key", "frob"], ["help", "frob"], ["--frob"], ["-x"], ["run", "--bogus"],
    ["token", "--bogus"], ["token", "-q"], ["key", "show", "--bogus"], ["check", "--raw"],
    ["run", "extra"], ["check", "extra"], ["refresh", "extra"], ["key", "generate", "x"],
    ["status", "a", "b"], ["token", "a", "b"], ["token", "--sock", "/x"], ["token", "--Raw"],
    # a missing value
    ["token", "--socket"], ["token", "--min-ttl"], ["--config"], ["run", "--config"],
    ["exec", "--env"], ["exec", "--file"], ["exec", "--wait"], ["exec", "--signal"],
    ["exec", "--on-rotation"], ["token", "--socket", "--json"], ["token", "--socket="],
    ["run", "--config="], ["exec", "--file=", "--", "x"],
    # a bad value
    ["token", "--min-ttl", "soon"], ["token", "--min-ttl", "-5"], ["token", "--min-ttl=1.5"],
    ["exec", "--wait", "3x", "--", "true"], ["exec", "--wait=", "--", "true"],
    ["exec", "--on-rotation", "maybe", "--", "true"], ["exec", "--on-rotation=Restart", "--", "true"],
    ["token", "--json=yes"], ["check", "--exchange=1"],
    # twice
    ["token", "--raw", "--raw"], ["--config", "/a", "--config", "/b", "run"],
    ["run", "--config", "/a", "--config=/b"], ["exec", "--env", "A", "--env", "B", "--", "x"],
    # conflicts
    ["token", "--raw", "--json"], ["token", "--json", "--raw"], ["watch", "--raw", "--json"],
    ["watch", "--json", "--raw"], ["key", "show", "--jwk", "--pem"],
    ["key", "show", "--jwk", "--thumbprint"], ["key", "show", "--pem", "--thumbprint"],
    # `--` and exec
    ["exec", "true"], ["exec", "--"], ["exec"], ["exec", "--env", "T"], ["--", "run"],
    ["key", "--", "show"], ["run", "--", "x"], ["status", "--", "a", "b"],
    # help where it stands
    ["token", "--raw", "--help"], ["token", "--bogus", "--help"], ["token", "--help", "--bogus"],
]]
CASES += [
    {"args": ["status"], "env": {"ASSET_AGENT_SOCKET": ""}},
    {"args": ["run"], "env": {"ASSET_AGENT_CONFIG": ""}},
    {"args": ["check"], "env": {"ASSET_AGENT_CONFIG": ""}},
    {"args": ["token"], "env": {"ASSET_AGENT_SOCKET": ""}},
]

GOOD = """[salesforce]
instance_url = "https://acme.my.salesforce.com"
client_id = "3MVG9abc"
[asset]
device_id = "d1"
name = "Pump 7"
serial_number = "00123"
"""
CONFIGS = [
    GOOD.replace("[asset]", "[asset]\nserial = \"x\""),
    GOOD + "\n[key]\nbits = \"big\"\n",
    GOOD.replace('instance_url = "https://acme.my.salesforce.com"', ""),
    GOOD.replace("https://acme", "http://acme"),
    GOOD.replace("https://acme.my.salesforce.com", "https://acme .my.salesforce.com"),
    GOOD.replace("https://acme.my.salesforce.com", "https://127.1"),
    GOOD.replace("https://acme.my.salesforce.com", "ftp://acme.my.salesforce.com"),
    GOOD.replace("https://acme.my.salesforce.com", "https://user:pw@acme.my.salesforce.com"),
    GOOD.replace("https://acme.my.salesforce.com", "not a url"),
    "this is = not toml [",
]
for text in CONFIGS:
    CASES.append({"args": ["run", "--config", "{config}"], "config": text})
CASES.append({"args": ["run", "--config", "/nonexistent/agent.toml"]})

def names(text):
    """The names a message gives: --options, -h/-V, <PLACEHOLDERS>, [NAME]s, environment
    variables, quoted arguments, config keys, and the rows of a Commands: list."""
    found = set()
    text = re.sub(r"For more information, try '[^']*'\.", "", text)
    found |= set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", text))
    found |= set(re.findall(r"(?<![\w-])-[hV](?![\w-])", text))
    found |= set(re.findall(r"<[A-Z]+>", text))
    found |= set(re.findall(r"\[[A-Z]+\]", text))
    found |= set(re.findall(r"ASSET_AGENT_[A-Z_]+", text))
    found |= set(re.findall(r"'([^'\s]+)'", text))
    found |= set(re.findall(r"[\w.-]+\.toml\b", text))
    found |= set(re.findall(r"\b(?:salesforce|asset|key)\.[a-z_]+\b", text))
    section = re.search(r"\nCommands:\n((?:  .*\n)+)", text)
    if section:
        found |= {line.split()[0] for line in section.group(1).splitlines()}
    values = re.search(r"\[possible values: ([^\]]*)\]", text)
    if values:
        found |= {v.strip() for v in values.group(1).split(",")}
    return sorted(found)

def main():
    binary = sys.argv[1]
    out = []
    with tempfile.TemporaryDirectory() as home:
        for case in CASES:
            args = list(case["args"])
            if "config" in case:
                path = os.path.join(home, "agent.toml")
                with open(path, "w") as f:
                    f.write(case["config"])
                os.chmod(path, 0o644)
                args = [path if a == "{config}" else a for a in args]
            env = {"PATH": os.environ.get("PATH", ""), "HOME": home}
            env.update(case.get("env", {}))
            p = subprocess.run([binary] + args, env=env, capture_output=True, timeout=30)
            stdout, stderr = p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")
            record = dict(case)
            record["code"] = p.returncode
            record["stream"] = "stdout" if stdout and not stderr else "stderr" if stderr and not stdout else "both" if stdout else "none"
            record["names"] = [n for n in names(stdout + stderr) if "{config}" not in n and home not in n]
            record["was"] = (stdout + stderr)[:400]
            out.append(record)
    json.dump(out, sys.stdout, indent=1)
    sys.stdout.write("\n")

main()
