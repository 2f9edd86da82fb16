import socket, struct, time, sys
def hdr(api,ver,cid): return struct.pack('>hhih',api,ver,cid,5)+b"stall"
def fetch(topic,part,off,cid):
    b=hdr(1,4,cid)+struct.pack('>iiiib',-1,500,1,50*2**20,0)+struct.pack('>i',1)+struct.pack('>h',len(topic))+topic.encode()+struct.pack('>i',1)+struct.pack('>iqi',part,off,50*2**20)
    return struct.pack('>i',len(b))+b
socks=[]
# stalled readers: pipeline many fetches and never read
for k in range(5):
    s=socket.create_connection(("127.0.0.1",19750)); s.setsockopt(socket.SOL_SOCKET,socket.SO_RCVBUF,4096)
    for i in range(20): s.sendall(fetch("crash-none",0,0,i))
    socks.append(s)
# mid-frame sender
s=socket.create_connection(("127.0.0.1",19750)); s.sendall(struct.pack('>i',50*2**20)+b"x"*1000); socks.append(s)
print("stalled clients ready",flush=True); time.sleep(60)
