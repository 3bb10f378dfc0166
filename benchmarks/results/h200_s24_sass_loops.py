"""Session 24: loops of a SASS dump (backward branches) and their instruction counts; with two hex addresses, the op mix between them."""
import re,sys
ins=[]
for l in open(sys.argv[1]).read().splitlines():
    m=re.match(r"\s+/\*([0-9a-f]{4})\*/\s+(.*?);",l)
    if m: ins.append((int(m.group(1),16),m.group(2)))
for a,t in ins:
    if "BRA" in t:
        tgt=re.search(r"0x([0-9a-f]+)",t)
        if tgt and int(tgt.group(1),16)<a:
            lo=int(tgt.group(1),16); print("loop", hex(lo), hex(a), "body", sum(1 for b,_ in ins if lo<=b<=a))
print("total", len(ins))
if len(sys.argv)>3:
    lo,hi=int(sys.argv[2],16),int(sys.argv[3],16)
    seg=[t for b,t in ins if lo<=b<hi]
    ops={}
    for t in seg:
        op=re.sub(r"^@!?U?P\w+\s+","",t).split()[0].split(".")[0]; ops[op]=ops.get(op,0)+1
    print(len(seg), sorted(ops.items(), key=lambda x:-x[1])[:30])
