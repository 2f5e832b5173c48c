// The inbox's opt-in to push notifications (served by the portal as /push.js).
//
// On a click: ask the browser for permission, register the service worker (/sw.js),
// subscribe through the browser's push service with the portal's VAPID public key as
// applicationServerKey, and hand the subscription (endpoint, p256dh, auth) to the
// portal, which keeps it for this inbox's patient. The portal then pushes "you have a
// new message" to this device whenever one arrives; sw.js shows it.
"use strict";

(() => {
  const button = document.getElementById("push-opt-in");
  const status = document.getElementById("push-status");
  if (button === null || status === null) {
    return;
  }
  const say = (text) => {
    status.textContent = text;
  };
  if (!("serviceWorker" in navigator) || !("PushManager" in window) || !("Notification" in window)) {
    say("This browser cannot show notifications.");
    return;
  }

  // base64url (the portal's key) to the bytes PushManager.subscribe wants.
  const bytesOf = (base64url) => {
    const base64 = base64url.replace(/-/g, "+").replace(/_/g, "/");
    const binary = atob(base64 + "=".repeat((4 - (base64.length % 4)) % 4));
    return Uint8Array.from(binary, (character) => character.charCodeAt(0));
  };
  const sameBytes = (a, b) =>
    a.byteLength === b.byteLength && new Uint8Array(a).every((byte, i) => byte === b[i]);

  const subscription = async (registration, key) => {
    const existing = await registration.pushManager.getSubscription();
    if (existing !== null) {
      const current = existing.options.applicationServerKey;
      if (current !== null && sameBytes(current, key)) {
        return existing;
      }
      await existing.unsubscribe(); // made for another key: the portal's key changed
    }
    return registration.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: key });
  };

  const optIn = async () => {
    const permission = await Notification.requestPermission();
    if (permission !== "granted") {
      say("Notifications are blocked for this site; allow them in the browser's settings.");
      return false;
    }
    const registration = await navigator.serviceWorker.register("/sw.js", { scope: "/" });
    await navigator.serviceWorker.ready;
    const answer = await fetch("/push/public-key", { headers: { Accept: "application/json" } });
    if (!answer.ok) {
      throw new Error(`the portal's key is not available (${answer.status})`);
    }
    const { publicKey } = await answer.json();
    const subscribed = await subscription(registration, bytesOf(publicKey));
    const bsn = encodeURIComponent(button.dataset.bsn);
    const stored = await fetch(`/patients/${bsn}/push-subscriptions`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(subscribed.toJSON()),
    });
    if (!stored.ok) {
      const { detail } = await stored.json().catch(() => ({ detail: String(stored.status) }));
      throw new Error(detail);
    }
    say("Done: this device will tell you when a new message arrives.");
    button.dataset.state = "subscribed";
    return true;
  };

  button.disabled = false;
  button.addEventListener("click", async () => {
    button.disabled = true;
    say("One moment…");
    let done = false;
    try {
      done = await optIn();
    } catch (error) {
      say(`Notifications could not be turned on: ${error.message}`);
      button.dataset.state = "failed";
    }
    button.disabled = done;
  });
})();
