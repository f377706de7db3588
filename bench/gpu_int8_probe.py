"""One 8192x3072 GEMV on CUDA: bf16 linear vs three int8 weight-only forms (why int8 is slow here).

    python bench/gpu_int8_probe.py
"""
import torch, time
torch.manual_seed(0)
n,k=8192,3072
w=torch.randn(n,k,device="cuda",dtype=torch.bfloat16)
x=torch.randn(1,k,device="cuda",dtype=torch.bfloat16)
s=w.float().abs().amax(1)/127; q=torch.round(w.float()/s[:,None]).clamp(-127,127).to(torch.int8); sb=s.to(torch.bfloat16)
def bench(f, name):
    for _ in range(10): f()
    torch.cuda.synchronize(); t=time.perf_counter()
    for _ in range(200): f()
    torch.cuda.synchronize(); dt=(time.perf_counter()-t)/200
    print(name, f"{dt*1e6:.1f} us")
bench(lambda: torch.nn.functional.linear(x,w), "bf16 linear")
try:
    out=torch.ops.aten._weight_int8pack_mm(x,q,sb); ref=torch.nn.functional.linear(x,w)
    print("int8pack rel err", ((out.float()-ref.float()).norm()/ref.float().norm()).item())
    bench(lambda: torch.ops.aten._weight_int8pack_mm(x,q,sb), "int8pack_mm")
except Exception as e: print("int8pack failed", e)
f=torch.compile(lambda x: torch.nn.functional.linear(x,q.to(x.dtype))*sb)
bench(lambda: f(x), "compiled dequant linear")
import torch._inductor.config as c
c.coordinate_descent_tuning=True
g=torch.compile(lambda x: (x.float()[:, None, :]*q.float()[None]).sum(-1).to(x.dtype)*sb)
bench(lambda: g(x), "compiled mul-sum gemv")
