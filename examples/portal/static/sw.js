// The portal's service worker (served as /sw.js, scope "/").
//
// It turns a push message from the portal into a notification, and a click on that
// notification into the patient's inbox. A push message holds no medical content, only
// {title, body, url}: "you have a new message" and the inbox's path on this portal.
"use strict";

self.addEventListener("install", () => {
  self.skipWaiting();
});

self.addEventListener("activate", (event) => {
  event.waitUntil(self.clients.claim());
});

// Only a page of this portal is ever opened, whatever a message says.
const ownPage = (given) => {
  const url = new URL(typeof given === "string" ? given : "/", self.location.origin);
  return url.origin === self.location.origin ? url.href : new URL("/", self.location.origin).href;
};

self.addEventListener("push", (event) => {
  let message = {};
  try {
    message = event.data ? event.data.json() : {};
  } catch {
    message = {}; // not JSON: still tell the patient something arrived
  }
  const title = typeof message.title === "string" ? message.title : "New message for you";
  event.waitUntil(
    self.registration.showNotification(title, {
      body: typeof message.body === "string" ? message.body : "",
      tag: "new-message", // a newer message replaces the notification of an older one
      renotify: true,
      data: { url: ownPage(message.url) },
    }),
  );
});

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  const target = ownPage(event.notification.data && event.notification.data.url);
  event.waitUntil(
    (async () => {
      // A tab of the portal is reused (shown the inbox), else a new one opens.
      const windows = await self.clients.matchAll({ type: "window" });
      const open = windows.find((client) => client.url === target) ?? windows[0];
      if (open === undefined) {
        return self.clients.openWindow(target);
      }
      const shown = open.url === target ? open : await open.navigate(target);
      return (shown ?? open).focus();
    })(),
  );
});
