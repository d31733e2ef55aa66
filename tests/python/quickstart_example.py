import torch
import ckptd

client = ckptd.Client()  # $CKPTD_SERVER, else 127.0.0.1:50051
run = "quickstart-mlp"
# `best` = lowest val_loss; keep the 3 newest versions plus the best one.
client.set_policy(run, monitor="val_loss", mode="min", keep_last=3, keep_best=1)


def make_model():
    return torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))


torch.manual_seed(0)
model = make_model()
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
x, y = torch.randn(256, 10), torch.randn(256, 1)
x_val, y_val = torch.randn(64, 10), torch.randn(64, 1)

step = 0
for epoch in range(5):
    for i in range(0, len(x), 32):
        loss = torch.nn.functional.mse_loss(model(x[i : i + 32]), y[i : i + 32])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
    scheduler.step()
    with torch.no_grad():
        val_loss = torch.nn.functional.mse_loss(model(x_val), y_val).item()

    # One immutable version per save; metrics and the environment go with it.
    info = client.save(
        run,
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
        },
        step=step,
        epoch=epoch,
        metrics={"val_loss": val_loss},
    )
    print(f"epoch {epoch}: val_loss {val_loss:.4f} -> {info.run}@{info.version} {list(info.aliases)}")

# History: every version with its metrics, oldest first.
for v in client.versions(run):
    print(f"  {v.run}@{v.version} step {v.step} val_loss {v.metrics['val_loss']:.4f} {list(v.aliases)}")

# Inference: the best weights into a fresh model.
best = client.get(run, "best")
fresh = make_model()
client.load_into(fresh, run, "best", key="model")
print(f"loaded {best.run}@{best.version} (epoch {best.epoch}, val_loss {best.metrics['val_loss']:.4f})")

# Resume: the whole training state of the last version.
state = client.load(run, "last")
model.load_state_dict(state["model"])
optimizer.load_state_dict(state["optimizer"])
scheduler.load_state_dict(state["scheduler"])
print(f"resuming after epoch {state['epoch']}")
