#!/usr/bin/env python3
"""A consumer group of the consumer protocol (KIP-848) at scale, against a running broker.

N members (raw ConsumerGroupHeartbeat v1, one connection each, one asyncio process) join one
group on one topic of P partitions, heartbeat at the interval the broker gives, and report as
owned exactly what the broker assigns, at once. Prints the time until every partition is owned
by exactly one member and all members are at the group's latest epoch, heartbeat latency and the
broker's CPU and RSS (read from /proc/<pid>: run it on the broker's machine), then 15 s of steady
heartbeats and the time for all to leave. Needs confluent-kafka (to create the topic):

    python3 scripts/bench_consumer_groups.py --broker-pid $(pgrep -f 'runnel serve') 2000
"""
import argparse, asyncio, sys, time, os, struct, uuid

ARGS = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ARGS.add_argument("members", type=int)
ARGS.add_argument("--partitions", type=int, default=100)
ARGS.add_argument("--stagger", type=float, default=0.0, help="seconds between joins")
ARGS.add_argument("--bootstrap", default="127.0.0.1:9092")
ARGS.add_argument("--broker-pid", type=int, required=True)
OPTS = ARGS.parse_args()
N, P, STAGGER, BPID = OPTS.members, OPTS.partitions, OPTS.stagger, OPTS.broker_pid
HOST, PORT = OPTS.bootstrap.rsplit(":", 1)
BOOT = (HOST, int(PORT))
G = f"s848-{N}-{int(time.time())}"
T = f"scale-t{P}"


def broker_stats():
    with open(f"/proc/{BPID}/stat") as f:
        fs = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fs[11]) + int(fs[12])) / os.sysconf("SC_CLK_TCK")
    rss = int(open(f"/proc/{BPID}/statm").read().split()[1]) * 4096
    return cpu, rss


def uv(n):
    out = b""
    while True:
        b = n & 0x7F; n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def cs(x):
    if x is None:
        return b"\x00"
    b = x.encode(); return uv(len(b) + 1) + b


def carr(items):
    if items is None:
        return b"\x00"
    return uv(len(items) + 1) + b"".join(items)


class Rd:
    def __init__(self, b): self.b, self.o = b, 0
    def i8(self): v = struct.unpack_from(">b", self.b, self.o)[0]; self.o += 1; return v
    def i16(self): v = struct.unpack_from(">h", self.b, self.o)[0]; self.o += 2; return v
    def i32(self): v = struct.unpack_from(">i", self.b, self.o)[0]; self.o += 4; return v
    def uv(self):
        n = s = 0
        while True:
            b = self.b[self.o]; self.o += 1; n |= (b & 0x7F) << s; s += 7
            if not b & 0x80: return n
    def cs(self):
        n = self.uv() - 1
        if n < 0: return None
        v = self.b[self.o:self.o + n].decode(); self.o += n; return v
    def uuid(self): v = self.b[self.o:self.o + 16]; self.o += 16; return v
    def carr(self, f):
        n = self.uv() - 1
        if n < 0: return None
        return [f() for _ in range(n)]
    def tags(self):
        for _ in range(self.uv()):
            self.uv(); n = self.uv(); self.o += n


def enc_hb(member_id, epoch, topics, owned):
    # ConsumerGroupHeartbeat v1
    p = (cs(G) + cs(member_id) + struct.pack(">i", epoch) + cs(None) + cs(None) + struct.pack(">i", 300000)
         + (carr([cs(t) for t in topics]) if topics is not None else b"\x00")
         + b"\x00"  # regex null
         + b"\x00"  # server assignor null
         + (carr([tid + carr([struct.pack(">i", x) for x in sorted(ps)]) + b"\x00" for tid, ps in owned.items()]) if owned is not None else b"\x00")
         + b"\x00")
    return p


def dec_hb(b):
    r = Rd(b); r.tags()  # response header v1 tags
    r.i32(); err = r.i16(); msg = r.cs(); mid = r.cs(); epoch = r.i32(); hbi = r.i32()
    asg = None
    if r.i8() >= 0:
        tps = r.carr(lambda: (r.uuid(), r.carr(r.i32), r.tags())[:2])
        r.tags()
        asg = {t: set(ps) for t, ps in tps}
    return err, msg, mid, epoch, hbi, asg


class C:
    def __init__(self): self.corr = 0; self.pending = {}
    async def connect(self):
        self.r, self.w = await asyncio.open_connection(*BOOT)
        asyncio.ensure_future(self.loop())
    async def loop(self):
        while True:
            n = struct.unpack(">i", await self.r.readexactly(4))[0]
            body = await self.r.readexactly(n)
            c = struct.unpack_from(">i", body)[0]
            self.pending.pop(c).set_result(body[4:])
    async def req(self, key, ver, payload):
        self.corr += 1
        h = struct.pack(">hhi", key, ver, self.corr) + struct.pack(">h", 3) + b"raw" + b"\x00"
        f = asyncio.get_event_loop().create_future(); self.pending[self.corr] = f
        m = h + payload
        self.w.write(struct.pack(">i", len(m)) + m); await self.w.drain()
        return await f


owned = {}    # i -> {tid: set}
epochs = {}
lat = []
errs = {}
maxepoch = [0]


async def member(i, stop):
    c = C(); await c.connect()
    mid = str(uuid.uuid4()).replace("-", "")[:22]
    epoch = 0
    mine = {}
    first = True
    hbi = 5000
    while not stop.is_set():
        t = time.time()
        b = await c.req(68, 1, enc_hb(mid, epoch, [T] if first else None, mine))
        lat.append(time.time() - t)
        err, msg, rmid, ep, hbi, asg = dec_hb(b)
        if err:
            errs[err] = errs.get(err, 0) + 1
            if err in (110, 25):  # fenced / unknown: rejoin
                epoch = 0; first = True; mine = {}
            await asyncio.sleep(1); continue
        first = False
        epoch = ep
        maxepoch[0] = max(maxepoch[0], ep)
        if asg is not None:
            mine = {t: ps for t, ps in asg.items() if ps}
        owned[i] = mine; epochs[i] = ep
        try:
            await asyncio.wait_for(stop.wait(), hbi / 1000)
        except asyncio.TimeoutError:
            pass
    await c.req(68, 1, enc_hb(mid, -1, None, None))


async def main():
    from confluent_kafka.admin import AdminClient, NewTopic
    a = AdminClient({"bootstrap.servers": OPTS.bootstrap})
    try:
        a.create_topics([NewTopic(T, P, 1)])[T].result()
    except Exception:
        pass
    cpu0, rss0 = broker_stats(); t0 = time.time(); stop = asyncio.Event()
    tasks = []
    for i in range(N):
        tasks.append(asyncio.ensure_future(member(i, stop)))
        if STAGGER:
            await asyncio.sleep(STAGGER)
    maxrss = rss0; done = None; last = 0
    while time.time() - t0 < 900:
        await asyncio.sleep(0.25)
        cpu, rss = broker_stats(); maxrss = max(maxrss, rss)
        total = sum(len(ps) for o in owned.values() for ps in o.values())
        uniq = len({(t, p) for o in owned.values() for t, ps in o.items() for p in ps})
        if len(epochs) == N and total == P and uniq == P and len(set(epochs.values())) == 1:
            done = time.time() - t0; break
        if time.time() - last > 10:
            last = time.time()
            l = sorted(lat[-2000:]) or [0]
            print(f"  t={time.time()-t0:6.1f} members={len(epochs)} owned={total} uniq={uniq} epochs={len(set(epochs.values()))} "
                  f"hb_p50={l[len(l)//2]*1000:.0f}ms p99={l[int(len(l)*.99)]*1000:.0f}ms cpu={cpu-cpu0:.1f}s rss={rss/1e6:.0f}MB errs={errs}", flush=True)
    cpu1, _ = broker_stats()
    l = sorted(lat) or [0]
    print(f"848 N={N} P={P} stagger={STAGGER}: converged in {done and round(done,1)} s; heartbeats={len(lat)} "
          f"p50={l[len(l)//2]*1000:.1f}ms p99={l[int(len(l)*.99)]*1000:.1f}ms max={l[-1]*1000:.0f}ms "
          f"broker_cpu={cpu1-cpu0:.1f}s rss {rss0/1e6:.0f}->{maxrss/1e6:.0f}MB group_epoch={maxepoch[0]} errs={errs}", flush=True)
    lat.clear(); c0, _ = broker_stats(); await asyncio.sleep(15); c1, _ = broker_stats()
    l = sorted(lat) or [0]
    print(f"  steady ({N/5:.0f} hb/s): broker cpu {100*(c1-c0)/15:.1f}%, hb p50={l[len(l)//2]*1000:.1f}ms p99={l[int(len(l)*.99)]*1000:.1f}ms", flush=True)
    stop.set(); t1 = time.time()
    await asyncio.wait(tasks, timeout=120)
    c2, _ = broker_stats()
    print(f"  all leave: {time.time()-t1:.1f}s broker cpu {c2-c1:.1f}s", flush=True)


asyncio.run(main())
